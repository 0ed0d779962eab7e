"""Worker of the distributed ``train`` tests: one rank of a 2-process gloo group.

Jobs (each rank writes ``<out>/<job>-rank<r>.json``: what happened on it):

* ``runs``: ``taskbalance train`` (the command line, joining the group from torchrun's
  environment variables) of :data:`RUNS`, ``taskbalance compare`` twice (the second reuses every
  run), then three runs that fail on one rank: a NaN loss, an error in the forward pass, an
  error in evaluation (every rank must raise, none hang);
* ``killed``: the 3-epoch mgda run, rank 0 killed (SIGKILL) right after the checkpoint of
  epoch 2 (fault injection of ``taskbalance.fileio``); rank 1 must then stop with an error;
* ``resumed``: the same command with ``--resume``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

TINY = ["--benchmark", "synthetic-mtl", "--size", "tiny", "--threads", "1", "--all-steps"]
#: batch 31 of 96 samples: 3 union steps per epoch, local batches of 16 and 15 samples.
RUNS = {
    "mgda": ["--method", "mgda", "--epochs", "3", "--batch-size", "31"],
    "dwa": ["--method", "dwa", "--epochs", "3", "--batch-size", "31"],
}
COMPARE = [
    "compare", "--benchmark", "synthetic-mtl", "--size", "tiny", "--methods", "ew,mgda",
    "--seeds", "1", "--epochs", "2", "--steps", "2", "--batch-size", "32", "--threads", "1",
]  # fmt: skip
KILL_AFTER_WRITE = 7  # rank 0's 7th atomic write: epoch 2's checkpoint.pt (see the test)


def argv(name: str, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, *RUNS[name], "--out", str(out / name), *extra]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _failing_runs(rank: int, world: int, port: int, out: Path) -> dict[str, str]:
    """Each run fails on one rank; returns ``{run: "ExceptionType: message"}`` of this rank."""
    from taskbalance.training import TrainConfig, train
    from taskbalance.training.distributed_trainer import DistributedTrainer

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    seen: dict[str, str] = {}
    original_losses = DistributedTrainer._rank_losses
    original_metrics = DistributedTrainer._accumulate_metrics

    def nan_loss(self: Any, batch: Any) -> Any:
        losses, counts = original_losses(self, batch)
        return {k: None if v is None else v * float("nan") for k, v in losses.items()}, counts

    def bad_forward(self: Any, batch: Any) -> Any:
        raise RuntimeError("forward failed on purpose")

    def bad_eval(self: Any, loader: Any, desc: str) -> Any:
        raise RuntimeError("evaluation failed on purpose")

    faults = {
        "nan": ("_rank_losses", nan_loss, 1),
        "forward": ("_rank_losses", bad_forward, 0),
        "eval": ("_accumulate_metrics", bad_eval, 1),
    }
    try:
        for name, (attr, fault, bad_rank) in faults.items():
            if rank == bad_rank:
                setattr(DistributedTrainer, attr, fault)
            config = TrainConfig(
                benchmark="synthetic-mtl", size="tiny", method="ew", epochs=1, steps=None,
                batch_size=32, out_dir=str(out / f"fail-{name}"), progress=False,
            )  # fmt: skip
            try:
                train(config)
                seen[name] = "finished"
            except Exception as exc:
                seen[name] = f"{type(exc).__name__}: {exc}"
            DistributedTrainer._rank_losses = original_losses  # type: ignore[method-assign]
            DistributedTrainer._accumulate_metrics = original_metrics  # type: ignore[method-assign]
    finally:
        dist.destroy_process_group()
    return seen


def _count_epoch_samples() -> list[float]:
    """Samples/s times seconds of every epoch line this rank prints (rank 0 alone prints), in
    the list returned (filled as the runs go)."""
    import taskbalance.training.trainer as trainer_module

    seen: list[float] = []
    original = trainer_module.epoch_line

    def counting(out_dir: Any, epoch: int, epochs: int, summary: Any, best: int) -> None:
        seen.append(summary["samples_per_second"] * summary["seconds"])
        original(out_dir, epoch, epochs, summary, best)

    trainer_module.epoch_line = counting  # type: ignore[assignment]
    return seen


def worker(rank: int, world: int, job: str, ports: list[int], out_dir: str) -> None:
    import taskbalance.fileio as fileio
    from taskbalance.cli import main

    fileio._writes = 0  # a forked rank counts its own atomic writes (fault injection)
    out = Path(out_dir)
    report: dict[str, Any] = {}
    torch.set_num_threads(1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - quiet workers
    try:
        if job == "runs":
            report["epoch_samples"] = _count_epoch_samples()
            for k, name in enumerate(RUNS):
                _env(rank, world, ports[k])
                report[name] = main(argv(name, out))
            _env(rank, world, ports[len(RUNS)])
            report["compare"] = main([*COMPARE, "--out", str(out / "compare")])
            _env(rank, world, ports[len(RUNS) + 1])  # again: every run is reused
            report["compare_again"] = main([*COMPARE, "--out", str(out / "compare")])
            report["failures"] = _failing_runs(rank, world, ports[len(RUNS) + 2], out)
        else:
            _env(rank, world, ports[0])
            if job == "killed" and rank == 0:
                os.environ["TASKBALANCE_FAULT_KILL"] = f"{KILL_AFTER_WRITE}:after"
            extra = ["--resume"] if job == "resumed" else []
            report["exit"] = main(argv("mgda", out / "killed", *extra))
    except BaseException as exc:  # recorded for the test (rank 1 of the killed run)
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    (out / f"{job}-rank{rank}.json").write_text(json.dumps(report))
