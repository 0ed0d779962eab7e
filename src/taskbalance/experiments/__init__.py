"""Experiments built on :func:`taskbalance.training.train`: method comparisons and weight tuning.

- :mod:`.compare` trains methods and single-task baselines and writes a leaderboard with plots;
- :mod:`.tune` searches static task weights with Optuna;
- :mod:`.report` holds the leaderboard arithmetic (pure functions);
- :mod:`.plots` draws the figures (one function per PNG);
- :mod:`.staged` trains in stages (frozen backbone, subsets of tasks);
- :mod:`.annotate` trains single-task teachers and writes pseudo-labels;
- :mod:`.workflows` compares masked, staged and auto-annotated training on partial labels.
"""

from .annotate import PseudoLabelStore, WithPseudoLabels, annotate
from .compare import (
    STANDARD_METHODS,
    CompareResult,
    CompareSettings,
    run_compare,
)
from .report import build_leaderboard, delta, mean_ranks, pareto_front, time_ratios, to_markdown
from .staged import Stage, default_schedule, run_stages
from .tune import TuneResult, TuneSettings, run_tune
from .workflows import compare_workflows

__all__ = [
    "STANDARD_METHODS",
    "CompareResult",
    "CompareSettings",
    "PseudoLabelStore",
    "Stage",
    "TuneResult",
    "TuneSettings",
    "WithPseudoLabels",
    "annotate",
    "build_leaderboard",
    "compare_workflows",
    "default_schedule",
    "delta",
    "mean_ranks",
    "pareto_front",
    "run_compare",
    "run_stages",
    "run_tune",
    "time_ratios",
    "to_markdown",
]
