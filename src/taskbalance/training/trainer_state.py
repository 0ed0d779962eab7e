"""What a :class:`~taskbalance.training.Trainer` saves and restores: its checkpoint state, the
check that a checkpoint belongs to the run being resumed, and the best epoch's weights (staged,
then promoted to ``best.pt`` once the checkpoint naming that epoch is written)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taskbalance.fileio import atomic_replace, atomic_write

from .checkpoint import CHECKPOINT_NAME, capture_rng_state, restore_rng_state
from .config import RESUME_MAY_DIFFER, unrecorded_files_note

__all__ = [
    "BEST_NAME",
    "STAGED_BEST_GLOB",
    "check_resumable",
    "commit_best",
    "load_trainer_state",
    "stage_best",
    "trainer_state",
]

BEST_NAME = "best.pt"
#: The best epoch's weights written aside until the checkpoint naming that epoch is written.
STAGED_BEST_GLOB = ".best-epoch*.pt"


def _staged_best(epoch: int | str) -> str:
    return f".best-epoch{epoch}.pt"


def _generators(trainer: Any) -> dict[str, torch.Generator]:
    gen = trainer.loader_generator
    return {"train_loader": gen} if gen is not None else {}


def trainer_state(trainer: Any) -> dict[str, Any]:
    """Everything needed to continue training exactly."""
    return {
        "epoch": trainer.epoch,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "method": trainer.method.state_dict(),
        "rng": capture_rng_state(_generators(trainer)),
        "history": trainer.history,
        "best": trainer.best,
        "first_val": trainer._first_val,
        "train_time": trainer._train_time,
        "train_steps": trainer._train_steps,
        "run_config": trainer.run_config,
        "tasks": list(trainer.tasks),
        "trainable_tasks": trainer.trainable_tasks,
        "mode": trainer.mode,
        "method_name": trainer.method.name,
        "data_order": _data_order(trainer),
    }


def _data_order(trainer: Any) -> str:
    """``"loader"`` (one process: the train loader's shuffling) or ``"union"`` (over ranks:
    :class:`~taskbalance.training.distributed.UnionBatches`); a run resumes only in its own."""
    return str(getattr(trainer, "data_order", "loader"))


def load_trainer_state(trainer: Any, state: Mapping[str, Any]) -> None:
    """Restore :func:`trainer_state` (RNG states included)."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state.get("scaler") is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.method.load_state_dict(state["method"])
    trainer.epoch = int(state["epoch"])
    trainer.history = list(state["history"])
    trainer.best = state["best"]
    trainer._first_val = state["first_val"]
    trainer._train_time = float(state["train_time"])
    trainer._train_steps = int(state["train_steps"])
    restore_rng_state(state["rng"], _generators(trainer))


def check_resumable(trainer: Any, state: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another run: tasks, mode, method or config keys (except
    :data:`~taskbalance.training.config.RESUME_MAY_DIFFER`) differ."""
    problems = []
    for key, mine in (
        ("tasks", list(trainer.tasks)),
        ("trainable_tasks", trainer.trainable_tasks),
        ("mode", trainer.mode),
        ("method_name", trainer.method.name),
    ):
        if state.get(key) != mine:
            problems.append(f"{key}: checkpoint {state.get(key)!r}, now {mine!r}")
    if state.get("data_order", "loader") != _data_order(trainer):
        problems.append(
            f"data order: checkpoint {state.get('data_order', 'loader')!r} (one process: "
            "'loader'; under torchrun: 'union'), now " + repr(_data_order(trainer))
        )
    saved_cfg = state.get("run_config") or {}
    config = trainer.run_config
    ignore = set(RESUME_MAY_DIFFER)
    scheduled = trainer._scheduler_name not in (None, "none")
    if scheduled or saved_cfg.get("scheduler", "none") != "none":
        ignore.discard("epochs")  # the schedule's shape depends on the number of epochs
    for key in dict.fromkeys([*saved_cfg, *config]):
        there, now = saved_cfg.get(key), config.get(key)
        if key not in ignore and there != now:
            note = key == "inputs" and unrecorded_files_note(there, now)
            problems.append(note or f"{key}: checkpoint {there!r}, now {now!r}")
    if problems:
        raise ValueError(
            f"cannot resume from {str(trainer.out_dir / CHECKPOINT_NAME)!r}: the config differs "
            "from the checkpoint's in "
            + "; ".join(problems)
            + ". Resume with the original settings, or start the run again with --overwrite "
            "(overwrite=True)."
        )


def stage_best(out_dir: Path, epoch: int, state: Mapping[str, Any]) -> None:
    """Write the weights of a new best epoch aside: they become ``best.pt`` only once the
    checkpoint naming this epoch is written (:func:`commit_best`), so a kill in between never
    leaves ``best.pt`` ahead of the run."""
    atomic_write(out_dir / _staged_best(epoch), lambda h: torch.save(state, h))


def commit_best(out_dir: Path | None, best_epoch: int | None, epoch: int) -> None:
    """Promote the staged weights of the checkpoint's best epoch to ``best.pt``; drop staged
    weights of epochs the checkpoint does not hold (a kill before it was written)."""
    if out_dir is None or not out_dir.is_dir():
        return
    for path in out_dir.glob(STAGED_BEST_GLOB):
        try:
            staged = int(path.name.removeprefix(".best-epoch").removesuffix(".pt"))
        except ValueError:
            continue
        if staged == best_epoch and staged <= epoch:
            atomic_replace(path, out_dir / BEST_NAME)
        else:
            path.unlink(missing_ok=True)
