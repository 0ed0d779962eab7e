"""Δm%: the average relative change of a multi-task model against single-task baselines.

Maninis, Radosavovic & Kokkinos, "Attentive Single-Tasking of Multiple Tasks", CVPR 2019; used in
this form by Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS 2023)::

    Δm% = (1/K) Σ_k (-1)^{δ_k} (M_k - B_k) / B_k × 100,    δ_k = 1 if higher is better else 0

``M_k`` is the multi-task model's value of metric ``k``, ``B_k`` the single-task baseline's. A
*lower* Δm% is better; an improvement over the baselines is negative.

LibMTL (Lin & Zhang, JMLR 2023) averages within each task first, then over tasks::

    Δm% = (1/T) Σ_t (1/K_t) Σ_{k∈t} (-1)^{δ_k} (M_k - B_k) / B_k × 100

(pass ``per_task``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from taskbalance.tasks.task import Task

__all__ = ["delta_m", "flatten_results", "metric_directions", "metric_groups"]

V = TypeVar("V")


def _relative_change(
    metric: str,
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> float:
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
    value, base = float(results[metric]), float(baseline[metric])
    if not math.isfinite(value):
        raise ValueError(f"delta_m: the result of metric {metric!r} is not finite ({value})")
    if not math.isfinite(base):
        raise ValueError(f"delta_m: the baseline of metric {metric!r} is not finite ({base})")
    if base == 0:
        raise ValueError(
            f"delta_m: the baseline of metric {metric!r} is 0; the relative change is undefined"
        )
    sign = -1.0 if higher_is_better[metric] else 1.0
    return sign * (value - base) / base * 100.0


def delta_m(
    results: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    *,
    per_task: Mapping[str, Sequence[str]] | None = None,
) -> float:
    """Δm% of ``results`` against ``baseline`` (lower is better; improvements are negative).

    Args:
        results: metric name -> value of the multi-task model. Names may be qualified
            (``"seg/miou"``). Without ``per_task`` every metric in ``results`` counts.
        baseline: metric name -> single-task baseline value (extra entries are ignored).
        higher_is_better: metric name -> direction (extra entries are ignored).
        per_task: task -> its metric names: average within each task, then over tasks (the
            LibMTL variant). Only the metrics listed count.

    Returns:
        Δm in percent.

    Raises:
        ValueError: no metric; a metric missing from the results, the baseline or the directions;
            a zero or non-finite baseline; a non-finite result; a task with no metric.
    """
    if per_task is None:
        metrics = list(results)
        if not metrics:
            raise ValueError("delta_m: results hold no metric")
        changes = [_relative_change(m, results, baseline, higher_is_better) for m in metrics]
        return sum(changes) / len(changes)
    if not per_task:
        raise ValueError("delta_m: per_task holds no task")
    task_means = []
    for task, names in per_task.items():
        if isinstance(names, str) or not list(names):
            raise ValueError(
                f"delta_m: per_task[{task!r}] must be a non-empty list of metric names, "
                f"got {names!r}"
            )
        changes = [_relative_change(m, results, baseline, higher_is_better) for m in names]
        task_means.append(sum(changes) / len(changes))
    return sum(task_means) / len(task_means)


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
