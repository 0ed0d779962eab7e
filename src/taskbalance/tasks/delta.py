"""Δm%: the average relative change of a multi-task model against single-task baselines.

This module is the one definition of Δm% in taskbalance: model selection in the trainer, the
``compare`` leaderboard, ``tune``'s objective and the partial-label workflow reports all call
:func:`delta_breakdown` (or :func:`delta_m`, its overall number).

Maninis, Radosavovic & Kokkinos, "Attentive Single-Tasking of Multiple Tasks", CVPR 2019; used in
this form by Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS 2023)::

    Δm% = (1/K) Σ_k (-1)^{δ_k} (M_k - B_k) / B_k × 100,    δ_k = 1 if higher is better else 0

``M_k`` is the multi-task model's value of metric ``k``, ``B_k`` the single-task baseline's. A
*lower* Δm% is better; an improvement over the baselines is negative.

LibMTL (Lin & Zhang, JMLR 2023) averages within each task first, then over tasks::

    Δm% = (1/T) Σ_t (1/K_t) Σ_{k∈t} (-1)^{δ_k} (M_k - B_k) / B_k × 100

(``average="tasks"``; :func:`delta_m` with ``per_task``).

Which metrics enter (:data:`DELTA_RULE`)
----------------------------------------
A relative change needs a baseline that is a meaningful scale. A metric is **left out** of Δm%
(and named as such in every report) when its baseline value

* is not finite, or is 0 (the relative change is undefined), or
* belongs to a higher-is-better metric and is below :data:`MIN_HIGHER_BASELINE` (0.1, the chance
  level of a 10-way classification): a score such as an accuracy, an IoU or a "within 22.5°"
  fraction that close to 0 means the baseline has not learnt that metric yet, and a relative
  change against it measures noise (an untrained baseline's 0.0218 becoming 0.0721 reads as
  +230 %). Converged baselines of the literature have these fractions at 0.3-0.7.

The decision depends on the baseline alone, so every model compared against one baseline is
measured on the same metrics. Lower-is-better metrics (errors) keep small baselines: a baseline
error near 0 is a very good baseline, and doubling it is a real +100 %. A non-finite value of the
compared model makes its Δm% ``nan`` (reported as such, never silently dropped). Baselines should be
converged single-task models (the literature's convention); reports state what their baseline is.

The per-task Δ% of a breakdown is the mean of exactly the metrics of that task that enter Δm%.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from taskbalance.tasks.task import Task

__all__ = [
    "DELTA_RULE",
    "MIN_HIGHER_BASELINE",
    "DeltaBreakdown",
    "delta_breakdown",
    "delta_m",
    "excluded_metrics",
    "flatten_results",
    "metric_directions",
    "metric_groups",
    "task_delta",
]

V = TypeVar("V")

#: A higher-is-better metric whose baseline is below this is left out of Δm% (see module doc).
MIN_HIGHER_BASELINE = 0.1

#: The rule of :func:`excluded_metrics`, in one sentence, for reports.
DELTA_RULE = (
    "a metric enters Δm% unless its baseline is 0 or not finite, or it is a higher-is-better "
    f"metric whose baseline is below {MIN_HIGHER_BASELINE:g} (a baseline that has not learnt it: "
    "relative changes against it are noise); per-task Δ% is the mean of the task's metrics that "
    "enter"
)


def _exclusion_reason(base: float, higher: bool, min_higher: float) -> str | None:
    if not math.isfinite(base):
        return f"baseline {base} is not finite"
    if base == 0:
        return "baseline is 0"
    if higher and base < min_higher:
        return f"higher-is-better baseline {base:.4g} < {min_higher:g}"
    return None


def excluded_metrics(
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    metrics: Iterable[str] | None = None,
    *,
    min_higher_baseline: float = MIN_HIGHER_BASELINE,
) -> dict[str, str]:
    """Metric -> why it is left out of Δm%, for ``metrics`` (default: every metric of
    ``higher_is_better``) by the rule of :data:`DELTA_RULE`; decided from the baseline alone."""
    names = list(higher_is_better) if metrics is None else list(metrics)
    out: dict[str, str] = {}
    for name in names:
        if name not in baseline:
            continue  # a missing baseline is an error of the caller, raised where it is used
        reason = _exclusion_reason(
            float(baseline[name]), bool(higher_is_better.get(name, False)), min_higher_baseline
        )
        if reason is not None:
            out[name] = reason
    return out


@dataclass(frozen=True)
class DeltaBreakdown:
    """Δm% with everything that went into it.

    Attributes:
        overall: Δm% (``nan`` when a compared value is not finite, or when no metric enters).
        per_task: group (task) -> mean relative change of its metrics that enter; ``None`` for a
            group none of whose metrics enters.
        changes: metric -> its signed relative change in percent (``-`` better), for every metric
            that enters, in order.
        excluded: metric -> why it was left out (see :data:`DELTA_RULE`).
        groups: group -> the metrics of that group that enter (what ``per_task`` averages).
        average: ``"metrics"`` (overall = mean of ``changes``) or ``"tasks"`` (mean of
            ``per_task``).
    """

    overall: float
    per_task: dict[str, float | None]
    changes: dict[str, float]
    excluded: dict[str, str]
    groups: dict[str, list[str]] = field(default_factory=dict)
    average: str = "metrics"

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "per_task": dict(self.per_task),
            "changes": dict(self.changes),
            "excluded": dict(self.excluded),
            "groups": {k: list(v) for k, v in self.groups.items()},
            "average": self.average,
        }


def _check_names(
    names: Sequence[str],
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> None:
    for metric in names:
        if metric not in results:
            raise ValueError(f"delta_m: metric {metric!r} is missing from the results")
        if metric not in baseline:
            raise ValueError(
                f"delta_m: metric {metric!r} is missing from the baseline (baseline has "
                f"{sorted(baseline)})"
            )
        if metric not in higher_is_better:
            raise ValueError(
                f"delta_m: the direction of metric {metric!r} is missing from higher_is_better "
                f"(it has {sorted(higher_is_better)})"
            )


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def delta_breakdown(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    average: Literal["metrics", "tasks"] = "metrics",
    min_higher_baseline: float = MIN_HIGHER_BASELINE,
) -> DeltaBreakdown:
    """Δm% of ``results`` against ``baseline`` with its per-metric and per-task parts.

    Args:
        results: metric name -> value of the compared model (names usually ``"task/metric"``).
        baseline: metric name -> baseline value (extra entries are ignored).
        higher_is_better: metric name -> direction (extra entries are ignored).
        groups: task -> its metric names; only the listed metrics count. Default: every metric
            of ``results``, grouped by the part of its name before the first ``/`` (names
            without ``/`` form one group each).
        average: ``"metrics"`` (Maninis et al.: the mean over metrics) or ``"tasks"`` (LibMTL:
            the mean of the per-task means).
        min_higher_baseline: the floor of :data:`DELTA_RULE` (0 keeps every non-zero baseline).

    Raises:
        ValueError: no metric or an empty group; a metric missing from the results, the
            baseline or the directions; an unknown ``average``.
    """
    if average not in ("metrics", "tasks"):
        raise ValueError(f"delta_m: average must be 'metrics' or 'tasks', got {average!r}")
    if groups is None:
        if not results:
            raise ValueError("delta_m: results hold no metric")
        derived: dict[str, list[str]] = {}
        for name in results:
            derived.setdefault(name.split("/", 1)[0], []).append(name)
        groups = derived
    if not groups:
        raise ValueError("delta_m: per_task holds no task")
    for task, names in groups.items():
        if isinstance(names, str) or not list(names):
            raise ValueError(
                f"delta_m: per_task[{task!r}] must be a non-empty list of metric names, "
                f"got {names!r}"
            )
    ordered = [m for names in groups.values() for m in names]
    _check_names(ordered, results, baseline, higher_is_better)
    excluded = excluded_metrics(
        baseline, higher_is_better, ordered, min_higher_baseline=min_higher_baseline
    )
    changes: dict[str, float] = {}
    kept: dict[str, list[str]] = {}
    per_task: dict[str, float | None] = {}
    for task, names in groups.items():
        kept[task] = [m for m in names if m not in excluded]
        for metric in kept[task]:
            value, base = float(results[metric]), float(baseline[metric])
            sign = -1.0 if higher_is_better[metric] else 1.0
            changes[metric] = (
                sign * (value - base) / base * 100.0 if math.isfinite(value) else math.nan
            )
        per_task[task] = _mean([changes[m] for m in kept[task]]) if kept[task] else None
    if average == "tasks":
        present = [v for v in per_task.values() if v is not None]
        overall = _mean(present) if present else math.nan
    else:
        overall = _mean(list(changes.values())) if changes else math.nan
    return DeltaBreakdown(overall, per_task, changes, excluded, kept, average)


def task_delta(
    metrics: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    *,
    average: Literal["metrics", "tasks"] = "metrics",
) -> DeltaBreakdown:
    """:func:`delta_breakdown` of nested ``{task: {metric: value}}`` dicts over every metric of
    ``higher_is_better``; keys of the result are ``"task/metric"``, groups are the tasks."""
    groups = {t: [f"{t}/{m}" for m in ms] for t, ms in higher_is_better.items()}
    for task, ms in higher_is_better.items():
        for m in ms:
            if m not in metrics.get(task, {}):
                raise ValueError(f"delta_m: metric '{task}/{m}' is missing from the results")
            if m not in baseline.get(task, {}):
                raise ValueError(f"delta_m: metric '{task}/{m}' is missing from the baseline")
    return delta_breakdown(
        flatten_results(metrics),
        flatten_results(baseline),
        flatten_results(higher_is_better),
        groups=groups,
        average=average,
    )


def delta_m(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    *,
    per_task: Mapping[str, Sequence[str]] | None = None,
    min_higher_baseline: float = MIN_HIGHER_BASELINE,
) -> float:
    """Δm% of ``results`` against ``baseline`` (lower is better; improvements are negative).

    Args:
        results: metric name -> value of the multi-task model. Names may be qualified
            (``"seg/miou"``). Without ``per_task`` every metric in ``results`` counts.
        baseline: metric name -> single-task baseline value (extra entries are ignored).
        higher_is_better: metric name -> direction (extra entries are ignored).
        per_task: task -> its metric names: average within each task, then over tasks (the
            LibMTL variant). Only the metrics listed count.
        min_higher_baseline: the floor of :data:`DELTA_RULE`.

    Returns:
        Δm in percent. Metrics the rule of :data:`DELTA_RULE` leaves out are named in a
        ``UserWarning`` (:func:`delta_breakdown` returns them instead).

    Raises:
        ValueError: no metric; a metric missing from the results, the baseline or the directions;
            a non-finite result; no metric left by the rule; a task with no metric.
    """
    groups: Mapping[str, Sequence[str]]
    if per_task is None:
        groups = {name: [name] for name in results}
        if not groups:
            raise ValueError("delta_m: results hold no metric")
        average: Literal["metrics", "tasks"] = "metrics"
    else:
        if not per_task:
            raise ValueError("delta_m: per_task holds no task")
        groups = per_task
        average = "tasks"
    out = delta_breakdown(
        results,
        baseline,
        higher_is_better,
        groups=groups,
        average=average,
        min_higher_baseline=min_higher_baseline,
    )
    for metric, change in out.changes.items():
        if not math.isfinite(change):
            raise ValueError(
                f"delta_m: the result of metric {metric!r} is not finite ({results[metric]})"
            )
    if not out.changes:
        shown = "; ".join(f"{m}: {why}" for m, why in out.excluded.items())
        raise ValueError(f"delta_m: no metric can enter Δm ({shown}); rule: {DELTA_RULE}")
    if out.excluded:
        shown = "; ".join(f"{m} ({why})" for m, why in out.excluded.items())
        warnings.warn(f"delta_m: left out {shown}", UserWarning, stacklevel=2)
    return out.overall


def flatten_results(results: Mapping[str, Mapping[str, V]], *, sep: str = "/") -> dict[str, V]:
    """``{task: {metric: v}}`` -> ``{"task/metric": v}`` (the qualified names ``delta_m`` takes);
    works for values and for directions alike."""
    return {
        f"{task}{sep}{metric}": value
        for task, row in results.items()
        for metric, value in row.items()
    }


def metric_directions(tasks: Iterable[Task], *, sep: str = "/") -> dict[str, bool]:
    """Qualified metric name (``"task/metric"``) -> higher-is-better, for ``delta_m``."""
    return {
        f"{task.name}{sep}{metric}": higher
        for task in tasks
        for metric, higher in task.higher_is_better.items()
    }


def metric_groups(tasks: Iterable[Task], *, sep: str = "/") -> dict[str, list[str]]:
    """Task name -> its qualified metric names: the ``per_task`` argument of ``delta_m``."""
    return {task.name: [f"{task.name}{sep}{m}" for m in task.metric_names] for task in tasks}
