"""What a run produced: :class:`RunResult`, the typed content of ``results.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .selection import SELECTION_RULE

__all__ = ["RunResult", "count_parameters"]


def count_parameters(model: nn.Module, task_names: Sequence[str]) -> int:
    """Parameters the evaluated tasks use: shared part plus their task parts (frozen included)."""
    shared_modules = getattr(model, "shared_modules", None)
    task_modules = getattr(model, "task_modules", None)
    if callable(shared_modules) and callable(task_modules):
        modules = list(shared_modules())
        for name in task_names:
            modules.extend(task_modules(name))
        seen: dict[int, int] = {}
        for module in modules:
            for p in module.parameters():
                seen[id(p)] = p.numel()
        return sum(seen.values())
    return sum(p.numel() for p in model.parameters())



@dataclass
class RunResult:
    """What a run produced; mirrors ``results.json``.

    Attributes:
        best_epoch: the epoch selected on validation (1-based).
        val, test: ``{task: {metric: value}}`` at the best epoch (``test`` is ``None`` without
            a test loader).
        history: one record per epoch (see :mod:`taskbalance.training.logging`).
        seconds_per_step: mean wall time of a training step (evaluation excluded).
        num_parameters: parameters of the model used by the evaluated tasks.
        out_dir: the run directory (``None`` when nothing was written).
        config: the run's config dict.
    """

    best_epoch: int
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]] | None
    history: list[dict[str, Any]]
    seconds_per_step: float
    num_parameters: int
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    best_score: float | None = None
    epochs_completed: int = 0
    mode: str | None = None
    method: str | None = None
    tasks: list[str] = field(default_factory=list)
    trainable_tasks: list[str] = field(default_factory=list)
    selection: str = SELECTION_RULE

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` content."""
        return {
            "config": self.config,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "selection": self.selection,
            "val": self.val,
            "test": self.test,
            "seconds_per_step": self.seconds_per_step,
            "num_parameters": self.num_parameters,
            "epochs_completed": self.epochs_completed,
            "method": self.method,
            "mode": self.mode,
            "tasks": self.tasks,
            "trainable_tasks": self.trainable_tasks,
            "history": self.history,
        }

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (the ``results.json`` content); :meth:`from_json` inverts it."""
        return self.to_dict()

    @classmethod
    def from_json(cls, data: Mapping[str, Any], out_dir: str | Path | None = None) -> RunResult:
        """The result held by ``data`` (keys of another version that it does not know are
        left out)."""
        known = {f for f in cls.__dataclass_fields__ if f != "out_dir"}
        folder = Path(out_dir) if out_dir is not None else None
        return cls(out_dir=folder, **{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, out_dir: str | Path) -> RunResult:
        """Read ``out_dir/results.json``."""
        from .rundir import load_results_file

        return cls.from_json(load_results_file(Path(out_dir) / "results.json"), out_dir)
