"""How a run shows its progress: tqdm bars on a terminal, otherwise one line per epoch."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["bar", "epoch_line", "progress_style"]


def progress_style(progress: bool) -> tuple[bool, bool]:
    """``(bars, epoch_lines)``: a terminal gets tqdm bars (steps, loss, samples/s), anything
    else one line per epoch. Worker processes (e.g. compare's parallel runs) share the terminal:
    lines, not bars."""
    import multiprocessing

    worker = multiprocessing.parent_process() is not None
    bars = bool(progress) and sys.stderr.isatty() and not worker
    return bars, bool(progress) and not bars


def bar(iterable: Iterable, show: bool, desc: str, total: int | None, leave: bool) -> Any:
    """``iterable`` wrapped in a tqdm bar when ``show``."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def epoch_line(
    out_dir: Path | None, epoch: int, epochs: int, summary: Mapping[str, Any], best_epoch: int
) -> None:
    """One line on stderr about a finished epoch, naming the run folder as
    ``<parent>/<folder>`` (which run a line is about when several print)."""
    shown = out_dir if out_dir is None else Path(*out_dir.parts[-2:])  # no empty parent
    name = "" if shown is None else f"{shown.as_posix()}: "
    losses = [v for v in summary["train_loss"].values() if v is not None]
    print(
        f"{name}epoch {epoch}/{epochs}: {summary['steps']} steps, mean task loss "
        f"{sum(losses) / max(len(losses), 1):.4g}, "
        f"{summary['samples_per_second']:.0f} samples/s, "
        f"{summary['seconds']:.1f}s; best epoch {best_epoch}",
        file=sys.stderr,
        flush=True,
    )
