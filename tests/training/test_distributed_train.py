"""``taskbalance train`` over 2 gloo processes (spawned here, as torchrun would start them).

* the 2-process run ends with the parameters and metrics of one process (a 1-rank group, the
  same union batches) for a gradient method (mgda) and a loss method with epoch statistics (dwa);
* a 2-process run killed (SIGKILL on rank 0 after the checkpoint of epoch 2) and resumed ends
  with exactly the parameters and metrics of the uninterrupted 2-process run; rank 1 stops
  with an error instead of waiting for the dead rank;
* a rank failing (NaN loss, forward pass, evaluation) makes every rank raise, none hangs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _train_worker as W  # noqa: E402

WORLD = 2
TIMEOUT = 120  # seconds: a hang fails the test instead of blocking the suite


def _ports(n: int) -> list[int]:
    found = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            found.append(s.getsockname()[1])
    return found


def _spawn(job: str, out: Path, ports: list[int]) -> list[dict[str, Any] | None]:
    """Run ``job`` on 2 spawned ranks; each rank's report (``None``: it wrote none)."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=W.worker, args=(r, WORLD, job, ports, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"rank(s) {hung} of job {job!r} did not end within {TIMEOUT}s"
    paths = [out / f"{job}-rank{r}.json" for r in range(2)]
    return [json.loads(p.read_text()) if p.exists() else None for p in paths]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("distributed-train")
    reports = _spawn("runs", out, _ports(len(W.RUNS) + 3))
    return {"out": out, "reports": reports}


def _one_rank(argv: list[str], monkeypatch) -> int:
    """``taskbalance train`` in this process as ``torchrun --nproc-per-node 1`` runs it."""
    from taskbalance.cli import main

    with monkeypatch.context() as patch:
        for key, value in dict(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_ports(1)[0]),
        ).items():  # fmt: skip
            patch.setenv(key, value)
        return main(argv)


def _params(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["model"]


def _metrics(folder: Path) -> tuple[Any, Any, list[Any]]:
    results = json.loads((folder / "results.json").read_text())
    return results["val"], results["test"], [h["train_loss"] for h in results["history"]]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix: float(tree) if isinstance(tree, (int, float)) else tree}


@pytest.mark.parametrize("name", list(W.RUNS))
def test_two_processes_end_as_one_process_on_the_same_union_batches(
    runs, name, tmp_path, monkeypatch
) -> None:
    assert runs["reports"][0][name] == 0 and runs["reports"][1][name] == 0, runs["reports"]
    two = runs["out"] / name
    assert _one_rank(W.argv(name, tmp_path), monkeypatch) == 0
    one = tmp_path / name
    a, b = _params(two), _params(one)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    got, want = _flat(_metrics(two)), _flat(_metrics(one))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    history = json.loads((one / "results.json").read_text())["history"]
    assert [h["steps"] for h in history] == [3, 3, 3]  # full union batches of 31 of 96 samples


def test_samples_per_second_count_every_rank(runs) -> None:
    # rank 0's epoch lines of the two 3-epoch runs, then compare's: 3 union steps of 31 samples
    # = 93 an epoch (rank 0's own part: 3 x 16 = 48)
    counts = runs["reports"][0]["epoch_samples"]
    assert counts[:6] == pytest.approx([93] * 6, rel=1e-9)
    assert runs["reports"][1]["epoch_samples"] == []  # rank 1 prints none


def test_two_process_compare_reports_once_what_one_process_reports(runs, tmp_path, monkeypatch):
    assert [r["compare"] for r in runs["reports"]] == [0, 0]
    assert [r["compare_again"] for r in runs["reports"]] == [0, 0]
    assert _one_rank([*W.COMPARE, "--out", str(tmp_path / "compare")], monkeypatch) == 0
    two = json.loads((runs["out"] / "compare" / "results.json").read_text())
    one = json.loads((tmp_path / "compare" / "results.json").read_text())
    assert two["timing"] is None  # under torchrun the times are the runs' own
    got, want = _flat(two["leaderboard"]), _flat(one["leaderboard"])
    assert got.keys() == want.keys()
    timed = [k for k in want if "second" in k or "time" in k or "ms" in k]
    for key in set(want) - set(timed):
        if isinstance(want[key], float):  # Δm% (in %) of metrics 1e-6 apart: abs 1e-4
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-4, nan_ok=True), key
        else:
            assert got[key] == want[key], key
    assert (runs["out"] / "compare" / "leaderboard.md").is_file()


def test_a_rank_failing_stops_every_rank_with_an_error(runs) -> None:
    failures = [report["failures"] for report in runs["reports"]]
    # the failing rank raises its own error, the other one RemoteRankError naming it
    assert "nan" in failures[1]["nan"].lower() and "RemoteRankError" in failures[0]["nan"]
    assert "rank(s) [1]" in failures[0]["nan"]
    assert failures[0]["forward"] == "RuntimeError: forward failed on purpose"
    assert "RemoteRankError" in failures[1]["forward"] and "rank(s) [0]" in failures[1]["forward"]
    assert failures[1]["eval"] == "RuntimeError: evaluation failed on purpose"
    assert "RemoteRankError" in failures[0]["eval"] and "evaluation" in failures[0]["eval"]


def test_killed_two_process_run_resumes_to_the_uninterrupted_result(
    runs, tmp_path, monkeypatch
) -> None:
    killed = _spawn("killed", tmp_path, _ports(1))
    assert killed[0] is None  # rank 0 was killed
    assert killed[1] is not None and "error" in killed[1], killed[1]  # rank 1 stopped
    folder = tmp_path / "killed" / "mgda"
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and not (folder / "results.json").exists()
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    shutil.copytree(folder, tmp_path / "one" / "mgda")  # resumed below by one process
    resumed = _spawn("resumed", tmp_path, _ports(1))
    assert [r["exit"] for r in resumed] == [0, 0], resumed  # type: ignore[index]
    # the resumed run's folder is the killed one (same --out): compare with the uninterrupted
    uninterrupted = runs["out"] / "mgda"
    a, b = _params(folder), _params(uninterrupted)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _metrics(folder) == _metrics(uninterrupted)
    # another number of processes: the same union batches, sums in another order
    assert _one_rank(W.argv("mgda", tmp_path / "one", "--resume"), monkeypatch) == 0
    c = _params(tmp_path / "one" / "mgda")
    for key in a:
        torch.testing.assert_close(c[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_one_process_checkpoint_is_not_resumed_under_torchrun(tmp_path, monkeypatch, capsys):
    from taskbalance.cli import main

    argv = ["train", *W.TINY, "--method", "ew", "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 0  # one process: the DataLoader's order
    assert _one_rank([*argv, "--epochs", "2", "--resume"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "data order: checkpoint 'loader'" in err and "now 'union'" in err
