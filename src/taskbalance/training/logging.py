"""Per-epoch history files: ``history.jsonl``, ``history.csv`` and (optionally) TensorBoard.

One history record per epoch (a plain dict, see :func:`flatten_record` for the CSV columns)::

    {"epoch": 1, "steps": 12, "seconds_per_step": 0.01, "lr": 0.001,
     "nonfinite_steps": 0,                        # steps skipped for a NaN/Inf task gradient
     "train_loss": {"left": 1.9, "right": 2.0},
     "weights": {"left": 1.0, "right": 1.0},      # mean StepInfo.weights (None: method has none)
     "grad_norms": {"left": 3.1, "right": 2.7},   # mean ‖g_t‖ (None: not computed)
     "cosines": {"left~right": 0.12},             # mean cos(g_i, g_j) (None: not computed)
     "affinity": {"left>right": 1e-4, ...},       # Trainer(affinity=True) only: mean first-
                                                  # order TAG affinity lr·g_i·g_j / L_j
     "val": {"left": {"accuracy": 0.5}, ...}, "test": {...},
     "selection_score": 0.0, "best_epoch": 1}

The JSON-lines and CSV files are rewritten atomically from the whole history after every epoch, so
after a resume they hold exactly the checkpoint's epochs (no duplicated or lost lines).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskbalance.fileio import atomic_write_text

__all__ = ["HistoryWriter", "flatten_record"]


def flatten_record(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"val/left/accuracy": 0.5, ...}``; ``None`` sections are left out."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_record(value, prefix=f"{name}/"))
        elif value is not None:
            out[name] = value
    return out


class HistoryWriter:
    """Writes the history of a run to ``out_dir`` after every epoch.

    Args:
        out_dir: the run directory.
        tensorboard: also write TensorBoard scalars when ``torch.utils.tensorboard`` (the
            ``tensorboard`` package) is importable; silently skipped otherwise.
        purge_step: first epoch to (re)write in TensorBoard (events of later epochs left by a
            killed run are discarded on resume).
    """

    def __init__(
        self, out_dir: str | os.PathLike[str], *, tensorboard: bool = False, purge_step: int = 1
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            self._tb = _tensorboard_writer(self.out_dir / "tensorboard", purge_step)

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def write(self, history: Sequence[Mapping[str, Any]], *, tensorboard: bool = True) -> None:
        """Rewrite ``history.jsonl`` and ``history.csv``; add the last record to TensorBoard
        (unless ``tensorboard`` is false: the record is already there)."""
        lines = "".join(json.dumps(_json_safe(r)) + "\n" for r in history)
        atomic_write_text(self.out_dir / "history.jsonl", lines)
        rows = [flatten_record(r) for r in history]
        columns: list[str] = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out_dir / "history.csv", buffer.getvalue())
        if tensorboard and self._tb is not None and history:
            last = history[-1]
            step = int(last["epoch"])
            for key, value in flatten_record(last).items():
                if key in ("epoch", "best_epoch") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by ``None`` so every line is strict JSON."""
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tensorboard_writer(log_dir: Path, purge_step: int):
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    except Exception as err:  # an installed but broken tensorboard should not stop training
        warnings.warn(f"TensorBoard logging disabled: {err}", RuntimeWarning, stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
