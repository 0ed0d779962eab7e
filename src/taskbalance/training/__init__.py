"""Training: :func:`train` from a :class:`TrainConfig`, the lower-level :class:`Trainer`,
checkpoints and history logging (see ``docs/architecture.md``, "Training")."""

from taskbalance.fileio import atomic_write

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .devices import resolve_device, seed_everything
from .loaders import make_loaders
from .logging import HistoryWriter
from .results import RunResult
from .runner import RunInputs, run, train
from .selection import comparable_metrics, selection_score
from .trainer import Callback, Trainer

__all__ = [
    "Callback",
    "HistoryWriter",
    "RunInputs",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "atomic_write",
    "comparable_metrics",
    "load_checkpoint",
    "make_loaders",
    "resolve_device",
    "run",
    "save_checkpoint",
    "seed_everything",
    "selection_score",
    "train",
]
