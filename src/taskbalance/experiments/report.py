"""Leaderboard arithmetic: aggregation over seeds, Δm%, mean ranks, time ratios, Pareto fronts,
parameter counts and what sharing saves against the single-task stack.

Everything here is a pure function of plain Python data (nested dicts of floats, as stored in
``results.json``), so it can be tested on hand-made inputs and reused outside ``compare``.

Conventions
-----------
- ``metrics`` means ``{task: {metric: value}}``; ``higher_is_better`` has the same layout with
  booleans.
- Δm% (:func:`delta`) is :func:`taskbalance.tasks.delta_m`: the mean over every metric of the
  relative change against the single-task baseline, sign-flipped for higher-is-better metrics, in
  percent. Lower is better; 0 means "as good as training each task alone".
- The single-task baseline of a leaderboard is the mean of the baseline runs over seeds, so the
  spread of a method's Δm% over seeds is that method's own spread.
- ``std`` is the sample standard deviation over seeds (``ddof=1``); 0 for a single seed.
- Mean rank: methods are ranked on each metric (of every task) by their mean over seeds, best = 1,
  ties share the average of their ranks; the mean rank is the average over metrics.
- Parameters: a method's count is its runs' ``num_parameters`` (every seed trains the same
  architecture); the single-task row's is the sum over its networks (one per task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "Metrics",
    "aggregate_metrics",
    "build_leaderboard",
    "delta",
    "mean_metrics",
    "mean_ranks",
    "mean_std",
    "merge_task_metrics",
    "metric_columns",
    "parameter_count",
    "pareto_front",
    "sharing_line",
    "sharing_summary",
    "time_ratios",
    "to_markdown",
]

#: ``{task: {metric: value}}``
Metrics = Mapping[str, Mapping[str, float]]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def metric_columns(higher_is_better: Mapping[str, Mapping[str, bool]]) -> list[tuple[str, str]]:
    """``[(task, metric), ...]`` in task order, then metric order."""
    return [(task, metric) for task, metrics in higher_is_better.items() for metric in metrics]


def mean_metrics(runs: Sequence[Metrics]) -> dict[str, dict[str, float]]:
    """Mean over runs (seeds) of each ``(task, metric)`` present in every run."""
    return {
        task: {metric: stats["mean"] for metric, stats in metrics.items()}
        for task, metrics in aggregate_metrics(runs).items()
    }


def aggregate_metrics(runs: Sequence[Metrics]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {metric: {"mean", "std"}}}`` over runs; keeps what every run has."""
    if not runs:
        raise ValueError("aggregate_metrics needs at least one run")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, metrics in runs[0].items():
        for metric in metrics:
            if all(metric in run.get(task, {}) for run in runs):
                mean, std = mean_std([run[task][metric] for run in runs])
                out.setdefault(task, {})[metric] = {"mean": mean, "std": std}
    return out


def merge_task_metrics(per_task: Mapping[str, Metrics]) -> dict[str, dict[str, float]]:
    """Combine single-task runs into one metrics dict: ``{task: run_metrics[task]}``.

    ``per_task`` maps each task to the metrics of the run trained on that task alone (which holds
    only that task).
    """
    merged: dict[str, dict[str, float]] = {}
    for task, metrics in per_task.items():
        if task not in metrics:
            raise ValueError(f"the single-task run of {task!r} has no metrics for {task!r}")
        merged[task] = dict(metrics[task])
    return merged


def delta(
    metrics: Metrics,
    baseline: Metrics,
    higher_is_better: Mapping[str, Mapping[str, bool]],
) -> float:
    """Δm% of ``metrics`` against ``baseline`` (see :func:`taskbalance.tasks.delta_m`).

    Every metric of ``metrics`` counts (each task's metrics are qualified as ``"task/metric"``);
    ``baseline`` and ``higher_is_better`` must cover them.
    """
    from taskbalance.tasks import delta_m, flatten_results

    return float(
        delta_m(
            flatten_results(metrics), flatten_results(baseline), flatten_results(higher_is_better)
        )
    )


def _average_ranks(scores: Sequence[float], higher_is_better: bool) -> list[float]:
    """Ranks (1 = best) of ``scores``; tied values share the mean of their ranks."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i] if higher_is_better else scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        shared = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = shared
        i = j + 1
    return ranks


def mean_ranks(
    table: Mapping[str, Metrics], higher_is_better: Mapping[str, Mapping[str, bool]]
) -> dict[str, float]:
    """Mean rank of each method over every ``(task, metric)`` of ``higher_is_better``.

    ``table`` maps method -> metrics (usually the means over seeds). A metric missing for some
    method is skipped for every method.
    """
    methods = list(table)
    totals = dict.fromkeys(methods, 0.0)
    used = 0
    for task, metric in metric_columns(higher_is_better):
        if not all(metric in table[m].get(task, {}) for m in methods):
            continue
        scores = [float(table[m][task][metric]) for m in methods]
        for method, rank in zip(
            methods, _average_ranks(scores, higher_is_better[task][metric]), strict=True
        ):
            totals[method] += rank
        used += 1
    if used == 0:
        raise ValueError("no metric is shared by every method; cannot rank")
    return {m: totals[m] / used for m in methods}


def time_ratios(
    seconds_per_step: Mapping[str, float], reference: str = "ew"
) -> dict[str, float | None]:
    """Each method's training time per step divided by ``reference``'s (``None`` without it)."""
    ref = seconds_per_step.get(reference)
    if ref is None or not ref > 0:
        return dict.fromkeys(seconds_per_step)
    return {m: float(s) / ref for m, s in seconds_per_step.items()}


def parameter_count(runs: Sequence[Mapping[str, Any]]) -> int | None:
    """The ``num_parameters`` of ``runs`` (the seeds of one method): ``None`` when a run lacks it.

    Seeds train the same architecture, so the counts agree; should they not, their mean (rounded)
    is returned.
    """
    counts = [run.get("num_parameters") for run in runs]
    values = [float(c) for c in counts if c is not None]
    if not counts or len(values) < len(counts):
        return None
    return round(math.fsum(values) / len(values))


def sharing_summary(
    multitask_parameters: int,
    single_task_parameters: int,
    multitask_seconds: float,
    single_task_seconds: float,
) -> dict[str, Any]:
    """What sharing saves: one multi-task model against the stack of single-task models.

    Args:
        multitask_parameters: parameters of the multi-task model.
        single_task_parameters: parameters of the single-task models, summed.
        multitask_seconds: inference time of the multi-task model on one batch.
        single_task_seconds: inference time of the stack on that batch (the sum over its models:
            they run one after another).

    Returns:
        The four inputs plus ``parameters_saved`` (difference), ``parameters_saved_fraction``
        (``1 - multitask / single``), ``time_saved_fraction`` (``1 - multitask / single``) and
        ``speedup`` (``single / multitask``); a fraction or ratio whose denominator is not
        positive is ``None``.
    """
    mtl_p, single_p = int(multitask_parameters), int(single_task_parameters)
    mtl_s, single_s = float(multitask_seconds), float(single_task_seconds)
    return {
        "multitask_parameters": mtl_p,
        "single_task_parameters": single_p,
        "parameters_saved": single_p - mtl_p,
        "parameters_saved_fraction": 1.0 - mtl_p / single_p if single_p > 0 else None,
        "multitask_seconds": mtl_s,
        "single_task_seconds": single_s,
        "time_saved_fraction": 1.0 - mtl_s / single_s if single_s > 0 else None,
        "speedup": single_s / mtl_s if mtl_s > 0 else None,
    }


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def sharing_line(sharing: Mapping[str, Any]) -> str:
    """One sentence from :func:`sharing_summary`'s dict (``tasks`` and ``batch_size`` optional:
    the number of single-task models and the batch the time was measured on)."""
    tasks = sharing.get("tasks")
    stack = f"{len(tasks)} single-task models" if tasks else "the single-task models"
    batch = sharing.get("batch_size")
    per_batch = f"per batch of {batch}" if batch else "per batch"
    speedup = sharing.get("speedup")
    return (
        f"Sharing saves {_percent(sharing['parameters_saved_fraction'])} of the parameters "
        f"({sharing['multitask_parameters']:,} in the multi-task model vs "
        f"{sharing['single_task_parameters']:,} in {stack}) and "
        f"{_percent(sharing['time_saved_fraction'])} of the inference time "
        f"({1000 * sharing['multitask_seconds']:.2f} ms vs "
        f"{1000 * sharing['single_task_seconds']:.2f} ms {per_batch}, forward without grad"
        + ("" if speedup is None else f"; {speedup:.2f}x faster")
        + ")."
    )


def pareto_front(
    points: Mapping[str, tuple[float, float]], higher_is_better: tuple[bool, bool] = (True, True)
) -> list[str]:
    """Names of the non-dominated points, ordered by the first coordinate.

    A point dominates another when it is at least as good in both coordinates and strictly better
    in one (directions from ``higher_is_better``).
    """
    sign = [1.0 if h else -1.0 for h in higher_is_better]
    scored = {n: (sign[0] * x, sign[1] * y) for n, (x, y) in points.items()}

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])

    front = [
        n
        for n, p in scored.items()
        if not any(dominates(q, p) for m, q in scored.items() if m != n)
    ]
    return sorted(front, key=lambda n: points[n][0])


def build_leaderboard(
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    baseline_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    *,
    split: str = "test",
    reference: str = "ew",
) -> dict[str, Any]:
    """The leaderboard of a comparison, as JSON-ready data.

    Args:
        method_runs: method -> one ``results.json`` dict per seed (needs ``split`` metrics and
            ``seconds_per_step``).
        baseline_runs: task -> one ``results.json`` dict per seed of the run trained on that task
            alone (same seeds as the methods, or any number).
        higher_is_better: ``{task: {metric: bool}}``; its order is the column order.
        split: which metrics to report (``"test"``: measured at the epoch chosen on validation).
        reference: method whose time per step is 1.0.

    Returns:
        ``{"split", "columns", "baseline", "rows"}``; each row has ``method``, ``seeds``,
        ``metrics`` (``{task: {metric: {mean, std}}}``), ``delta_m`` (``{mean, std, values}``),
        ``mean_rank``, ``seconds_per_step`` (``{mean, std}``), ``time_ratio``, ``num_parameters``
        (:func:`parameter_count`; ``None`` when the runs lack it). ``baseline`` has the single-task
        reference: ``metrics`` (mean over seeds), ``seconds_per_step`` (the sum over tasks:
        training every task separately), its ``time_ratio`` and ``num_parameters`` (the sum over
        the single-task networks).
    """
    if not method_runs:
        raise ValueError("no method runs to put on a leaderboard")
    missing = [t for t in higher_is_better if not baseline_runs.get(t)]
    if missing:
        raise ValueError(f"no single-task baseline run for task(s) {missing}")
    tasks = list(higher_is_better)
    n_base = {len(baseline_runs[t]) for t in tasks}
    # Per seed: the single-task runs of all tasks merged into one metrics dict; then the mean.
    base_seeds = [
        merge_task_metrics({t: baseline_runs[t][k][split] for t in tasks})
        for k in range(min(n_base))
    ]
    baseline = mean_metrics(base_seeds)

    rows: list[dict[str, Any]] = []
    for method, runs in method_runs.items():
        if not runs:
            raise ValueError(f"method {method!r} has no runs")
        per_seed = [run[split] for run in runs]
        deltas = [delta(m, baseline, higher_is_better) for m in per_seed]
        d_mean, d_std = mean_std(deltas)
        s_mean, s_std = mean_std([float(run["seconds_per_step"]) for run in runs])
        rows.append(
            {
                "method": method,
                "seeds": len(runs),
                "metrics": aggregate_metrics(per_seed),
                "delta_m": {"mean": d_mean, "std": d_std, "values": deltas},
                "seconds_per_step": {"mean": s_mean, "std": s_std},
                "num_parameters": parameter_count(runs),
            }
        )
    ranks = mean_ranks(
        {
            r["method"]: {
                t: {m: s["mean"] for m, s in ms.items()} for t, ms in r["metrics"].items()
            }
            for r in rows
        },
        higher_is_better,
    )
    base_seconds = math.fsum(
        mean_std([float(run["seconds_per_step"]) for run in baseline_runs[t]])[0] for t in tasks
    )
    base_counts = [parameter_count(baseline_runs[t]) for t in tasks]
    base_params = None if None in base_counts else sum(c for c in base_counts if c is not None)
    seconds = {r["method"]: r["seconds_per_step"]["mean"] for r in rows}
    ratios = time_ratios({**seconds, "\0single-task": base_seconds}, reference)
    for row in rows:
        row["mean_rank"] = ranks[row["method"]]
        row["time_ratio"] = ratios[row["method"]]
    return {
        "split": split,
        "reference": reference,
        "columns": [list(c) for c in metric_columns(higher_is_better)],
        "higher_is_better": {t: dict(m) for t, m in higher_is_better.items()},
        "baseline": {
            "metrics": baseline,
            "seeds": min(n_base),
            "seconds_per_step": base_seconds,
            "time_ratio": ratios["\0single-task"],
            "num_parameters": base_params,
        },
        "rows": rows,
    }


def _fmt(mean: float, std: float | None, seeds: int, digits: int = 4) -> str:
    if seeds > 1 and std is not None:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _params(count: Any) -> str:
    return "-" if count is None else f"{int(count):,}"


def to_markdown(
    board: Mapping[str, Any],
    *,
    title: str | None = None,
    sharing: Mapping[str, Any] | None = None,
) -> str:
    """The leaderboard as a Markdown table (rows sorted by Δm%, best first); ``sharing`` (from
    :func:`sharing_summary`) adds the line of :func:`sharing_line` below the table."""
    columns = [tuple(c) for c in board["columns"]]
    hib = board["higher_is_better"]
    arrow = {True: "↑", False: "↓"}
    header = (
        ["method"]
        + [f"{t} {m} {arrow[hib[t][m]]}" for t, m in columns]
        + [
            "Δm% ↓",
            "mean rank ↓",
            "params",
            "ms/step",
            "time vs " + board.get("reference", "ew"),
        ]
    )
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    base = board["baseline"]
    cells = ["single-task"] + [f"{base['metrics'][t][m]:.4f}" for t, m in columns]
    ratio = base.get("time_ratio")
    cells += [
        "0.00",
        "-",
        _params(base.get("num_parameters")),
        f"{1000 * base['seconds_per_step']:.1f}",
        "-" if ratio is None else f"{ratio:.2f}x",
    ]
    lines.append("| " + " | ".join(cells) + " |")
    for row in sorted(board["rows"], key=lambda r: r["delta_m"]["mean"]):
        n = row["seeds"]
        cells = [row["method"]]
        for t, m in columns:
            stats = row["metrics"].get(t, {}).get(m)
            cells.append("-" if stats is None else _fmt(stats["mean"], stats["std"], n))
        d = row["delta_m"]
        sps = row["seconds_per_step"]
        cells.append(_fmt(d["mean"], d["std"], n, 2))
        cells.append(f"{row['mean_rank']:.2f}")
        cells.append(_params(row.get("num_parameters")))
        cells.append(_fmt(1000 * sps["mean"], 1000 * sps["std"], n, 1))
        cells.append("-" if row["time_ratio"] is None else f"{row['time_ratio']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = max(r["seeds"] for r in board["rows"])
    lines += [
        "",
        f"Metrics on the {board['split']} split at the epoch selected on validation"
        + (f"; mean ± std over {seeds} seeds." if seeds > 1 else "; 1 seed.")
        + " Δm%: mean relative change of every metric against the single-task baselines"
        " (one network per task), lower is better. Mean rank over all metrics (1 = best)."
        " Params: parameters of the model. Time: training seconds per step."
        " Single-task params and time: the sum over its networks.",
    ]
    if sharing is not None:
        lines += ["", sharing_line(sharing)]
    return "\n".join(lines) + "\n"
