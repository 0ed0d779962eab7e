"""Experiments built on :func:`taskbalance.training.train`: method comparisons and weight tuning.

- :mod:`.compare` trains methods and single-task baselines and writes a leaderboard with plots;
- :mod:`.tune` searches static task weights with Optuna;
- :mod:`.report` holds the leaderboard arithmetic (pure functions);
- :mod:`.plots` draws the figures (one function per PNG).
"""

from .compare import (
    STANDARD_METHODS,
    CompareResult,
    CompareSettings,
    run_compare,
)
from .report import build_leaderboard, delta, mean_ranks, pareto_front, time_ratios, to_markdown
from .tune import TuneResult, TuneSettings, run_tune

__all__ = [
    "STANDARD_METHODS",
    "CompareResult",
    "CompareSettings",
    "TuneResult",
    "TuneSettings",
    "build_leaderboard",
    "delta",
    "mean_ranks",
    "pareto_front",
    "run_compare",
    "run_tune",
    "time_ratios",
    "to_markdown",
]
