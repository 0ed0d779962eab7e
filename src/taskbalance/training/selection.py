"""Model selection: which epoch of a run is kept, decided on validation metrics only."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "SELECTION_RULE",
    "comparable_metrics",
    "final_metrics",
    "mean_of_last_epochs",
    "selection_score",
]

SELECTION_RULE = (
    "lowest validation Δm% (taskbalance.tasks.task_delta over every metric of the trained tasks) "
    "against the first epoch's validation metrics; with one trained task, its primary metric. "
    "Metrics are left out by the rule of taskbalance.tasks.DELTA_RULE (first-epoch value 0, not "
    "finite, or a higher-is-better value below 0.05); ties keep the earlier epoch."
)


def mean_of_last_epochs(
    history: Sequence[Mapping[str, Any]], k: int, split: str = "test"
) -> tuple[dict[str, dict[str, float]], int]:
    """Each metric's mean over the last ``k`` epochs of ``history`` (the records of
    ``history.jsonl``), and how many epochs entered (``min(k, epochs)``).

    The final number of the MTAN protocol (Liu et al., CVPR 2019) and of the papers that follow
    it (CAGrad, Nash-MTL, FAMO): the test metrics averaged over the last 10 epochs instead of
    one epoch chosen on validation. A metric missing from one of those epochs is left out (never
    averaged over fewer epochs than the others).

    Raises:
        ValueError: ``k < 1``, no epoch holds ``split`` metrics.
    """
    from taskbalance.validation import is_int

    if not is_int(k) or k < 1:
        raise ValueError(f"k (epochs to average) must be an integer >= 1, got {k!r}")
    records = [r[split] for r in history if isinstance(r.get(split), Mapping)]
    if not records:
        raise ValueError(f"no epoch of the history has {split!r} metrics to average")
    last = records[-k:]
    out: dict[str, dict[str, float]] = {}
    for task, metrics in last[0].items():
        for metric in metrics:
            values = [r.get(task, {}).get(metric) for r in last]
            if all(v is not None for v in values):
                out.setdefault(task, {})[metric] = math.fsum(map(float, values)) / len(values)
    return out, len(last)


def final_metrics(
    best: Mapping[str, Any], history: Sequence[Mapping[str, Any]], final_epochs: int | None
) -> tuple[Any, Any, str]:
    """``(val, test, rule)`` a run reports: those of the ``best`` epoch record by
    :data:`SELECTION_RULE`, or with ``final_epochs`` each metric's mean over the last K epochs
    (:func:`mean_of_last_epochs`; ``test`` stays ``None`` without a test split)."""
    if final_epochs is None:
        return best["val"], best["test"], SELECTION_RULE
    val, used = mean_of_last_epochs(history, final_epochs, "val")
    test = best["test"]
    if test is not None:
        test = mean_of_last_epochs(history, final_epochs, "test")[0]
    rule = (
        f"val and test: each metric's mean over the last {used} epoch(s) (final_epochs="
        f"{final_epochs}); best_epoch by the rule: {SELECTION_RULE}"
    )
    return val, test, rule


def comparable_metrics(
    metrics: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Any],
) -> tuple[dict[str, float], dict[str, float], dict[str, bool], list[str]]:
    """The metrics of ``tasks`` that enter Δm% against ``baseline``
    (:data:`taskbalance.tasks.DELTA_RULE`, decided from the baseline alone).

    Returns ``(results, base, directions, skipped)``: the first three keyed by ``"task/metric"``
    (the arguments of :func:`taskbalance.tasks.delta_m`); ``skipped`` lists the metrics left out
    because their baseline is missing or the rule excludes them, or their value is not finite.
    """
    from taskbalance.tasks import excluded_metrics

    results: dict[str, float] = {}
    base: dict[str, float] = {}
    directions: dict[str, bool] = {}
    skipped: list[str] = []
    for task in tasks:
        for metric, higher in task.higher_is_better.items():
            key = f"{task.name}/{metric}"
            value = float(metrics.get(task.name, {}).get(metric, math.nan))
            b = float(baseline.get(task.name, {}).get(metric, math.nan))
            if excluded_metrics({key: b}, {key: bool(higher)}) or not math.isfinite(value):
                skipped.append(key)
                continue
            results[key], base[key], directions[key] = value, b, bool(higher)
    return results, base, directions, skipped


def selection_score(
    val: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Any],
) -> float:
    """Model-selection score of validation metrics ``val`` (lower is better).

    One task: its primary metric (negated when higher is better). Several tasks: Δm% of ``val``
    against ``baseline`` (the first epoch's validation metrics) over every metric of ``tasks``
    that enters by the one rule of :data:`taskbalance.tasks.DELTA_RULE`
    (:func:`taskbalance.tasks.task_delta`). A non-finite validation metric gives ``inf`` (never
    selected over a finite epoch).
    """
    from taskbalance.tasks import task_delta

    if len(tasks) == 1:
        task = tasks[0]
        value = float(val[task.name][task.primary_metric])
        if not math.isfinite(value):
            return math.inf
        return -value if task.higher_is_better[task.primary_metric] else value
    primary: dict[str, float] = {}
    for task in tasks:
        if not all(math.isfinite(float(v)) for v in val[task.name].values()):
            return math.inf
        if task.primary_metric in val[task.name]:
            value = float(val[task.name][task.primary_metric])
            primary[task.name] = -value if task.higher_is_better[task.primary_metric] else value
    breakdown = task_delta(val, baseline, {t.name: dict(t.higher_is_better) for t in tasks})
    if not breakdown.changes:  # no metric enters: fall back to the signed primary metrics
        return sum(primary.values())
    return float(breakdown.overall)
