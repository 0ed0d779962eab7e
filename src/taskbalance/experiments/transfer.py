"""Negative transfer: per task, a multi-task method against the single-task baseline, over seeds.

For every method and task, each seed's multi-task run is paired with the single-task run of
the same seed (the pairing of :mod:`taskbalance.experiments.report`), and the task's Δ% (the mean
relative change of the task's metrics that enter Δm%, :func:`taskbalance.tasks.task_delta`;
positive = worse than single-task) is computed per seed. A task *loses* (negative transfer
beyond the noise) when the mean Δ% is positive and the two-sided paired t-test over the seeds
rejects "no change" at :data:`~taskbalance.experiments.report.ALPHA`; it *gains* when the mean is
negative and the test rejects; otherwise the change is within the seed noise. One seed gives no
noise estimate, so no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .report import ALPHA, _baseline_by_seed, _by_seed, mean_std, paired_t_test
from .tables import markdown_table

__all__ = ["TaskTransfer", "negative_transfer", "transfer_markdown"]

Runs = Sequence[Mapping[str, Any]]

#: the rule of the verdicts, in one sentence, for reports
TRANSFER_RULE = (
    "Δ% is the task's mean relative change against its single-task baseline of the same seed "
    "(positive = worse); a task loses (or gains) when the two-sided paired t-test over seeds "
    f"gives p < {ALPHA:g}, otherwise the change is within the seed noise"
)


@dataclass(frozen=True)
class TaskTransfer:
    """One method's transfer to one task.

    ``multi``/``single``: ``{metric: {"mean", "std"}}`` over the paired seeds; ``values``: the
    per-seed Δ%; ``test``: :func:`~taskbalance.experiments.report.paired_t_test` of them (``None``
    with one seed); ``verdict``: ``"loses"``, ``"gains"``, ``"within noise"`` or ``"one seed"``.
    """

    method: str
    task: str
    multi: dict[str, dict[str, float]]
    single: dict[str, dict[str, float]]
    values: list[float]
    test: dict[str, Any] | None
    verdict: str

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]


def _verdict(test: Mapping[str, Any] | None, alpha: float) -> str:
    if test is None:
        return "one seed"
    if test["p"] < alpha and test["mean"] != 0:
        return "loses" if test["mean"] > 0 else "gains"
    return "within noise"


def _spread(values: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for metric in values[0]:
        mean, std = mean_std([v[metric] for v in values])
        out[metric] = {"mean": mean, "std": std}
    return out


def negative_transfer(
    method_runs: Mapping[str, Runs],
    baseline_runs: Mapping[str, Runs],
    higher_is_better: Mapping[str, Mapping[str, bool]],
    *,
    split: str = "test",
    alpha: float = ALPHA,
) -> list[TaskTransfer]:
    """Every method's transfer to every task (see the module docstring); ``results.json``
    dicts in, seeds read from ``config.seed``. Tasks with no metric entering Δ% are left out."""
    from taskbalance.tasks import task_delta

    tasks = list(higher_is_better)
    base_seeds = _baseline_by_seed(baseline_runs, tasks, split)
    rows = []
    for method, runs in method_runs.items():
        paired = [(seed, run) for seed, run in _by_seed(runs).items() if seed in base_seeds]
        if not paired:
            continue
        per_task: dict[str, list[float]] = {t: [] for t in tasks}
        for seed, run in paired:
            breakdown = task_delta(run[split], base_seeds[seed], higher_is_better)
            for task in tasks:
                value = breakdown.per_task.get(task)
                if value is not None:
                    per_task[task].append(float(value))
        for task in tasks:
            if len(per_task[task]) != len(paired):
                continue  # no metric of the task enters Δ%
            test = paired_t_test(per_task[task])
            rows.append(TaskTransfer(
                method=method, task=task,
                multi=_spread([run[split][task] for _, run in paired]),
                single=_spread([base_seeds[seed][task] for seed, _ in paired]),
                values=per_task[task], test=test, verdict=_verdict(test, alpha),
            ))  # fmt: skip
    return rows


def _cell(spread: Mapping[str, Mapping[str, float]]) -> str:
    return ", ".join(f"{m} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in spread.items())


def transfer_markdown(rows: Sequence[TaskTransfer]) -> list[str]:
    """The ``## Negative transfer`` section of a report (lines)."""
    header = ["method", "task", "multi-task", "single-task", "Δ% (mean ± std)", "p", "verdict"]
    cells = [
        [r.method, r.task, _cell(r.multi), _cell(r.single), f"{r.mean:+.2f} ± {r.std:.2f}",
         "-" if r.test is None else f"{r.test['p']:.3f}",
         f"**{r.verdict}**" if r.verdict == "loses" else r.verdict]
        for r in rows
    ]  # fmt: skip
    losers = sorted({f"{r.task} ({r.method})" for r in rows if r.verdict == "loses"})
    if losers:
        summary = "Tasks that lose beyond the seed noise: " + ", ".join(losers) + "."
    elif all(r.verdict == "one seed" for r in rows):
        summary = "With one seed: no noise estimate, so no verdict; run 2 or more seeds."
    else:
        summary = "No task loses beyond the seed noise."
    return [
        "## Negative transfer", "", f"{TRANSFER_RULE}.", "",
        *markdown_table(header, cells), "", summary, "",
    ]  # fmt: skip
