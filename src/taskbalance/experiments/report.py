"""Leaderboard arithmetic: aggregation over seeds, Δm%, mean ranks, time ratios, Pareto fronts,
parameter counts and what sharing saves against the single-task stack.

Everything here is a pure function of plain Python data (nested dicts of floats, as stored in
``results.json``), so it can be tested on hand-made inputs and reused outside ``compare``.

Conventions
-----------
- ``metrics`` means ``{task: {metric: value}}``; ``higher_is_better`` has the same layout with
  booleans.
- Δm% (:func:`delta`) is :func:`taskbalance.tasks.task_delta`, the one definition: the mean over
  every metric that enters (:data:`taskbalance.tasks.DELTA_RULE`) of the relative change against
  the single-task baseline, sign-flipped for higher-is-better metrics, in percent. Lower is better;
  0 means "as good as training each task alone". Metrics the rule leaves out are decided from the
  baseline (the same for every row) and named in the report.
- Significance: a paired t-test over seeds (:func:`paired_t_test`, two-sided): each method's
  per-seed Δm% minus ``ew``'s of the same seed, and each method's per-seed Δm% against the
  single-task baseline of the same seed; a mark when ``p <`` :data:`ALPHA`.
- Time per step: from an interleaved timing pass (:func:`summarise_timing`, median and range
  over rounds, every method measured under the same conditions) when one is given, else the
  training runs' own measurement (mean ± std over seeds).
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
    "ALPHA",
    "Metrics",
    "aggregate_metrics",
    "build_leaderboard",
    "delta",
    "mean_metrics",
    "mean_ranks",
    "mean_std",
    "merge_task_metrics",
    "metric_columns",
    "critical_t",
    "paired_t_test",
    "parameter_count",
    "pareto_front",
    "sharing_line",
    "sharing_summary",
    "significance_marks",
    "summarise_timing",
    "time_ratios",
    "to_markdown",
]

#: ``{task: {metric: value}}``
Metrics = Mapping[str, Mapping[str, float]]

#: Significance level of the paired tests that mark a method in the leaderboard (two-sided).
ALPHA = 0.05


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
    """Δm% of ``metrics`` against ``baseline`` over every metric of ``higher_is_better`` that
    enters by :data:`taskbalance.tasks.DELTA_RULE` (:func:`taskbalance.tasks.task_delta`);
    ``nan`` when a value is not finite or no metric enters."""
    from taskbalance.tasks import task_delta

    return float(task_delta(metrics, baseline, higher_is_better).overall)


def paired_t_test(differences: Sequence[float]) -> dict[str, Any] | None:
    """Two-sided one-sample t-test of ``mean(differences) == 0`` (a paired t-test when each
    difference is between two runs of the same seed). ``None`` for fewer than two values or a
    non-finite one.

    Returns ``{"n", "mean", "std", "t", "p"}``; with zero spread, ``p`` is 1 for a zero mean and
    0 otherwise (``t`` infinite).
    """
    values = [float(v) for v in differences]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    mean, std = mean_std(values)
    n = len(values)
    if std == 0:
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        from scipy import stats

        t = mean / (std / math.sqrt(n))
        p = float(2 * stats.t.sf(abs(t), df=n - 1))
    return {"n": n, "mean": mean, "std": std, "t": t, "p": p}


def summarise_timing(samples: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """``{name: seconds per step of each round}`` ->
    ``{name: {"median", "min", "max", "rounds"}}``."""
    out: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        vals = sorted(float(v) for v in values)
        if not vals:
            raise ValueError(f"timing of {name!r} holds no round")
        mid = len(vals) // 2
        median = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
        out[name] = {"median": median, "min": vals[0], "max": vals[-1], "rounds": len(vals)}
    return out


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


def _seed_of(run: Mapping[str, Any], index: int) -> Any:
    return (run.get("config") or {}).get("seed", index)


def _by_seed(runs: Sequence[Mapping[str, Any]]) -> dict[Any, Mapping[str, Any]]:
    """Runs keyed by their seed (the position where a run names none), so paired tests pair
    the runs of the same seed whatever order the runs arrive in."""
    keyed = {_seed_of(run, k): run for k, run in enumerate(runs)}
    if len(keyed) != len(runs):
        raise ValueError(f"two runs share a seed: {[_seed_of(r, k) for k, r in enumerate(runs)]}")
    return keyed



def _baseline_by_seed(
    baseline_runs: Mapping[str, Sequence[Mapping[str, Any]]], tasks: Sequence[str], split: str
) -> dict[Any, dict[str, Any]]:
    """Per seed that every task's baseline has: the single-task runs merged into one metrics
    dict (seed order of the first task)."""
    by_task = {t: _by_seed(baseline_runs[t]) for t in tasks}
    merged = {
        seed: merge_task_metrics({t: by_task[t][seed][split] for t in tasks})
        for seed in by_task[tasks[0]]
        if all(seed in by_task[t] for t in tasks)
    }
    if not merged:
        raise ValueError("the single-task baselines of the tasks share no seed")
    return merged

def build_leaderboard(
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    baseline_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    *,
    split: str = "test",
    reference: str = "ew",
    timing: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The leaderboard of a comparison, as JSON-ready data.

    Args:
        method_runs: method -> one ``results.json`` dict per seed (needs ``split`` metrics and
            ``seconds_per_step``; the seed is read from ``config.seed``, else the position).
        baseline_runs: task -> one ``results.json`` dict per seed of the run trained on that task
            alone. Paired tests pair the runs of the same seed, in any order; the baseline is
            the mean over the seeds every task's baseline has.
        higher_is_better: ``{task: {metric: bool}}``; its order is the column order.
        split: which metrics to report (``"test"``: measured at the epoch chosen on validation).
        reference: the method the paired test and the time ratio compare against.
        timing: seconds per step of each round of an interleaved timing pass: method ->
            values, and ``"single-task/<task>"`` -> values for each baseline network. When given,
            times and time ratios come from it (medians), not from the training runs.

    Returns:
        ``{"split", "reference", "columns", "higher_is_better", "delta_rule", "excluded",
        "alpha", "baseline", "rows", "timing_source"}``; each row has ``method``, ``seeds``,
        ``metrics`` (``{task: {metric: {mean, std}}}``), ``delta_m`` (``{mean, std, values}``:
        per seed against the mean baseline), ``vs_reference`` and ``vs_single_task`` (the
        :func:`paired_t_test` dicts plus the per-seed ``values`` tested; ``None`` with one seed),
        ``mean_rank``, ``seconds_per_step`` (training, ``{mean, std}``), ``timing`` (the
        :func:`summarise_timing` entry or ``None``), ``time_ratio``, ``num_parameters``.
    """
    _check_leaderboard_input(method_runs, baseline_runs, higher_is_better)
    from taskbalance.tasks import DELTA_RULE, excluded_metrics, flatten_results

    tasks = list(higher_is_better)
    base_seeds = _baseline_by_seed(baseline_runs, tasks, split)
    baseline = mean_metrics(list(base_seeds.values()))
    excluded = excluded_metrics(flatten_results(baseline), flatten_results(higher_is_better))
    rows = [
        _method_row(method, runs, baseline, base_seeds, higher_is_better, split)
        for method, runs in method_runs.items()
    ]
    _add_reference_tests(rows, reference)
    _add_ranks(rows, higher_is_better)
    summary, base_seconds = _add_times(rows, baseline_runs, tasks, timing, reference)
    base_counts = [parameter_count(baseline_runs[t]) for t in tasks]
    base_params = None if None in base_counts else sum(c for c in base_counts if c is not None)
    return {
        "split": split,
        "reference": reference,
        "columns": [list(c) for c in metric_columns(higher_is_better)],
        "higher_is_better": {t: dict(m) for t, m in higher_is_better.items()},
        "delta_rule": DELTA_RULE,
        "excluded": excluded,
        "alpha": ALPHA,
        "timing_source": "interleaved" if summary is not None else "training",
        "baseline": {
            "metrics": baseline,
            "seeds": len(base_seeds),
            "per_seed": list(base_seeds.values()),
            **base_seconds,
            "num_parameters": base_params,
        },
        "rows": rows,
    }


def _check_leaderboard_input(
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    baseline_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
) -> None:
    if not method_runs:
        raise ValueError("no method runs to put on a leaderboard")
    missing = [t for t in higher_is_better if not baseline_runs.get(t)]
    if missing:
        raise ValueError(f"no single-task baseline run for task(s) {missing}")
    empty = [m for m, runs in method_runs.items() if not runs]
    if empty:
        raise ValueError(f"method {empty[0]!r} has no runs")


def _method_row(
    method: str,
    runs: Sequence[Mapping[str, Any]],
    baseline: Metrics,
    base_seeds: Mapping[Any, Metrics],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    split: str,
) -> dict[str, Any]:
    """One method's row before ranks, reference tests and times are added; ``_per_seed``
    (seed -> Δm%, removed by :func:`_add_reference_tests`) feeds the paired test."""
    by_seed = _by_seed(runs)
    per_seed = [run[split] for run in runs]
    deltas = [delta(m, baseline, higher_is_better) for m in per_seed]
    d_mean, d_std = mean_std(deltas)
    s_mean, s_std = mean_std([float(run["seconds_per_step"]) for run in runs])
    vs_single = [
        delta(run[split], base_seeds[seed], higher_is_better)
        for seed, run in by_seed.items()
        if seed in base_seeds
    ]
    single_test = paired_t_test(vs_single)
    return {
        "method": method,
        "seeds": len(runs),
        "seed_ids": list(by_seed),
        "metrics": aggregate_metrics(per_seed),
        "delta_m": {"mean": d_mean, "std": d_std, "values": deltas},
        "vs_single_task": None if single_test is None else {**single_test, "values": vs_single},
        "seconds_per_step": {"mean": s_mean, "std": s_std},
        "num_parameters": parameter_count(runs),
        "_per_seed": dict(zip(by_seed, deltas, strict=True)),
    }


def _add_reference_tests(rows: list[dict[str, Any]], reference: str) -> None:
    """``vs_reference``: each row's per-seed Δm% minus the reference's of the same seed."""
    per_seed = {row["method"]: row["_per_seed"] for row in rows}
    ref = per_seed.get(reference)
    for row in rows:
        own = row.pop("_per_seed")
        test = None
        if ref is not None and row["method"] != reference:
            diffs = [d - ref[seed] for seed, d in own.items() if seed in ref]
            result = paired_t_test(diffs)
            test = None if result is None else {**result, "values": diffs}
        row["vs_reference"] = test


def _add_times(
    rows: list[dict[str, Any]],
    baseline_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    tasks: Sequence[str],
    timing: Mapping[str, Sequence[float]] | None,
    reference: str,
) -> tuple[dict[str, dict[str, float]] | None, dict[str, Any]]:
    """Each row's ``timing`` and ``time_ratio``; returns the timing summary and the baseline's
    time keys (``seconds_per_step``, ``timing``, ``time_ratio``)."""
    summary = summarise_timing(timing) if timing is not None else None
    if summary is not None:
        absent = [r["method"] for r in rows if r["method"] not in summary]
        absent += [t for t in tasks if f"single-task/{t}" not in summary]
        if absent:
            raise ValueError(f"the timing pass has no measurement of {absent}")
        seconds = {r["method"]: summary[r["method"]]["median"] for r in rows}
        base_seconds = math.fsum(summary[f"single-task/{t}"]["median"] for t in tasks)
    else:
        seconds = {r["method"]: r["seconds_per_step"]["mean"] for r in rows}
        base_seconds = math.fsum(
            mean_std([float(run["seconds_per_step"]) for run in baseline_runs[t]])[0] for t in tasks
        )
    ratios = time_ratios({**seconds, "\0single-task": base_seconds}, reference)
    for row in rows:
        row["timing"] = None if summary is None else summary[row["method"]]
        row["time_ratio"] = ratios[row["method"]]
    return summary, {
        "seconds_per_step": base_seconds,
        "timing": None if summary is None else {t: summary[f"single-task/{t}"] for t in tasks},
        "time_ratio": ratios["\0single-task"],
    }


def _add_ranks(rows: list[dict[str, Any]], higher_is_better: Mapping[str, Mapping[str, bool]]):
    """Each row's ``mean_rank`` over the means of every metric."""
    ranks = mean_ranks(
        {
            r["method"]: {
                t: {m: s["mean"] for m, s in ms.items()} for t, ms in r["metrics"].items()
            }
            for r in rows
        },
        higher_is_better,
    )
    for row in rows:
        row["mean_rank"] = ranks[row["method"]]


def _fmt(mean: float, std: float | None, seeds: int, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "nan"
    if seeds > 1 and std is not None:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _params(count: Any) -> str:
    return "-" if count is None else f"{int(count):,}"


def _p_value(test: Mapping[str, Any] | None) -> str:
    return "-" if test is None else f"{test['p']:.3f}"


def significance_marks(row: Mapping[str, Any], alpha: float = ALPHA) -> str:
    """``"*"`` when the row differs from the reference (paired test ``p < alpha``), ``"†"`` when
    it differs from single-task; both, one or ``""``."""
    marks = ""
    ref, single = row.get("vs_reference"), row.get("vs_single_task")
    if ref is not None and ref["p"] < alpha:
        marks += "*"
    if single is not None and single["p"] < alpha:
        marks += "†"
    return marks


def _time_cell(row: Mapping[str, Any], seeds: int) -> str:
    t = row.get("timing")
    if t is not None:
        return f"{1000 * t['median']:.1f} [{1000 * t['min']:.1f}–{1000 * t['max']:.1f}]"
    sps = row["seconds_per_step"]
    return _fmt(1000 * sps["mean"], 1000 * sps["std"], seeds, 1)


def critical_t(n: int, alpha: float = ALPHA) -> float:
    """|t| above which a two-sided paired t-test over ``n`` seeds gives ``p < alpha``."""
    from scipy import stats

    return float(stats.t.ppf(1 - alpha / 2, df=n - 1))


def to_markdown(
    board: Mapping[str, Any],
    *,
    title: str | None = None,
    sharing: Mapping[str, Any] | None = None,
) -> str:
    """The leaderboard as a Markdown table (rows sorted by Δm%, best first) and the notes that
    say how every number was obtained; ``sharing`` (from :func:`sharing_summary`) adds the line
    of :func:`sharing_line` below."""
    from .tables import markdown_table

    columns = [tuple(c) for c in board["columns"]]
    alpha = board.get("alpha", ALPHA)
    seeds = max(r["seeds"] for r in board["rows"])
    tested = seeds > 1
    order = sorted(
        board["rows"],
        key=lambda r: (not math.isfinite(r["delta_m"]["mean"]), r["delta_m"]["mean"]),
    )
    cells = [_baseline_cells(board["baseline"], columns, tested)]
    cells += [_row_cells(row, columns, tested, alpha) for row in order]
    lines = [f"## {title}", ""] if title else []
    lines += markdown_table(_leaderboard_header(board, columns, tested), cells)
    lines += ["", " ".join(_leaderboard_notes(board, seeds, alpha))]
    if sharing is not None:
        lines += ["", sharing_line(sharing)]
    return "\n".join(lines) + "\n"


def _leaderboard_header(
    board: Mapping[str, Any], columns: Sequence[tuple[str, str]], tested: bool
) -> list[str]:
    hib = board["higher_is_better"]
    ref_name = board.get("reference", "ew")
    excluded = board.get("excluded") or {}
    arrow = {True: "↑", False: "↓"}
    header = ["method"]
    for t, m in columns:
        header.append(
            f"{t} {m} {arrow[hib[t][m]]}" + (" (not in Δm)" if f"{t}/{m}" in excluded else "")
        )
    header.append("Δm% ↓")
    if tested:
        header += [f"p vs {ref_name}", "p vs single-task"]
    return header + ["mean rank ↓", "params", "ms/step", "time vs " + ref_name]


def _baseline_cells(
    base: Mapping[str, Any], columns: Sequence[tuple[str, str]], tested: bool
) -> list[str]:
    cells = ["single-task"] + [f"{base['metrics'][t][m]:.4f}" for t, m in columns]
    cells.append("0.00")
    if tested:
        cells += ["-", "-"]
    ratio = base.get("time_ratio")
    return cells + [
        "-",
        _params(base.get("num_parameters")),
        f"{1000 * base['seconds_per_step']:.1f}",
        "-" if ratio is None else f"{ratio:.2f}x",
    ]


def _row_cells(
    row: Mapping[str, Any], columns: Sequence[tuple[str, str]], tested: bool, alpha: float
) -> list[str]:
    n = row["seeds"]
    cells = [row["method"]]
    for t, m in columns:
        stats = row["metrics"].get(t, {}).get(m)
        cells.append("-" if stats is None else _fmt(stats["mean"], stats["std"], n))
    d = row["delta_m"]
    cells.append(_fmt(d["mean"], d["std"], n, 2) + significance_marks(row, alpha))
    if tested:
        cells += [_p_value(row.get("vs_reference")), _p_value(row.get("vs_single_task"))]
    cells.append(f"{row['mean_rank']:.2f}")
    cells.append(_params(row.get("num_parameters")))
    cells.append(_time_cell(row, n))
    cells.append("-" if row["time_ratio"] is None else f"{row['time_ratio']:.2f}x")
    return cells


def _leaderboard_notes(board: Mapping[str, Any], seeds: int, alpha: float) -> list[str]:
    """The sentences under the leaderboard: split, Δm rule, test, ranks, times."""
    ref_name = board.get("reference", "ew")
    excluded = board.get("excluded") or {}
    notes = [
        f"Metrics on the {board['split']} split "
        + board.get("final_rule", "at the epoch selected on validation")
        + (f"; mean ± std over {seeds} seeds." if seeds > 1 else "; 1 seed."),
        "Δm%: mean over the metrics that enter of the relative change against the single-task "
        "baselines (one network per task, mean over seeds), lower is better. Rule: "
        + board.get("delta_rule", "every metric enters")
        + ".",
    ]
    if excluded:
        notes.append("Not in Δm: " + "; ".join(f"{m} ({why})" for m, why in excluded.items()) + ".")
    options = board.get("method_options") or {}
    if options:
        notes.append(
            "Method options (every seed's run): "
            + "; ".join(
                f"{m} " + ", ".join(f"{k}={v!r}" for k, v in opts.items())
                for m, opts in options.items()
            )
            + "."
        )
    if seeds > 1:
        crit = critical_t(seeds, alpha)
        notes.append(
            f"Test: paired t-test over seeds, two-sided, α = {alpha:g}. p vs {ref_name}: each "
            f"seed's Δm% minus {ref_name}'s Δm% of the same seed; p vs single-task: each seed's "
            "Δm% against the single-task networks of the same seed. "
            f"* = differs from {ref_name}, † = differs from single-task (p < {alpha:g}). "
            f"With {seeds} seeds a difference is flagged only when it exceeds {crit:.2f} times "
            "its standard error, so small real differences go unflagged: no mark means "
            "'not shown different', not 'equal'."
        )
    notes.append("Mean rank over all metrics (1 = best). Params: parameters of the model.")
    return notes + [_timing_note(board)]


def _timing_note(board: Mapping[str, Any]) -> str:
    if board.get("timing_source") == "interleaved":
        rounds = min(r["timing"]["rounds"] for r in board["rows"])
        return (
            "ms/step: median [min–max] over "
            f"{rounds} rounds of a timing pass after training in which every method (and each "
            "single-task network) took a few training steps in turn, in one process under the "
            "same conditions; single-task: the sum of its networks' medians."
        )
    return (
        "ms/step: training seconds per step of each run (runs measured at different times "
        "on a shared machine are only roughly comparable). Single-task: the sum over its "
        "networks."
    )
