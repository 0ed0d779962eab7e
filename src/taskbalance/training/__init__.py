"""Training: :func:`train` from a :class:`TrainConfig`, the lower-level :class:`Trainer`,
checkpoints and history logging (see ``docs/architecture.md``, "Training")."""

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .logging import HistoryWriter
from .runner import train
from .trainer import (
    Callback,
    RunResult,
    Trainer,
    comparable_metrics,
    make_loaders,
    resolve_device,
    seed_everything,
    selection_score,
)

__all__ = [
    "Callback",
    "HistoryWriter",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "atomic_write",
    "comparable_metrics",
    "load_checkpoint",
    "make_loaders",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "selection_score",
    "train",
]
