"""``taskbalance train --groups "a,b;c"``: one network per task group, reported as one model.

Each group is an ordinary run of the runner (:func:`taskbalance.training.run`) with
``tasks=[group]``, so hard sharing inside a group and nothing shared across groups; a second call
reuses the finished group runs and resumes a killed one (``overwrite`` trains them afresh).
Every task's metrics come from its own group's run; the combined model's compute is the sum
over the group networks (parameters, and seconds per training step: one step of every group
network processes one batch), set against one network shared by all the grouped tasks. With
single-task baselines, Δm% (:mod:`taskbalance.tasks.delta`) scores the combination, and the
shared network when it is trained too (``shared=True``), so a grouping that ``diagnose``
recommends can be verified.

Layout of ``out_dir``::

    <task>+<task>/       one run folder per group (config.yaml, results.json, ...)
    shared/              the one shared network (with shared=True)
    groups.json          everything below, as JSON
    groups.md            the same as a table
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskbalance.fileio import atomic_write_json, atomic_write_text

__all__ = [
    "GroupedResult",
    "check_groups",
    "group_folder",
    "load_baselines",
    "parse_groups",
    "train_groups",
    "write_grouped_report",
]

Metrics = dict[str, dict[str, float]]
Directions = dict[str, dict[str, bool]]


def parse_groups(text: str) -> list[list[str]]:
    """``"a,b;c"`` -> ``[["a", "b"], ["c"]]`` (groups separated by ``;``, tasks by ``,``)."""
    groups = [[t.strip() for t in part.split(",")] for part in text.split(";")]
    for group in groups:
        if not all(group):
            raise ValueError(
                f"--groups {text!r} has an empty group or task name; write groups as "
                "'task,task;task' (';' between groups, ',' inside a group)"
            )
    return groups


def check_groups(groups: Sequence[Sequence[str]], task_names: Sequence[str]) -> None:
    """Every task known and in at most one group; ``ValueError`` naming the problem."""
    seen: dict[str, int] = {}
    for k, group in enumerate(groups):
        if not group:
            raise ValueError(f"group {k + 1} is empty")
        for task in group:
            if task not in task_names:
                raise ValueError(
                    f"unknown task {task!r} in the groups; the benchmark's tasks are "
                    f"{list(task_names)}"
                )
            if task in seen:
                raise ValueError(
                    f"task {task!r} is in groups {seen[task] + 1} and {k + 1}; put each task "
                    "in one group"
                )
            seen[task] = k


def group_folder(group: Sequence[str]) -> str:
    """The run folder's name of a group: its tasks joined by ``+``."""
    return "+".join(group)


def load_baselines(folder: str | Path, tasks: Sequence[str], seed: int) -> Metrics:
    """Each task's test metrics from its single-task run in ``folder``: ``<task>/seed<seed>/``
    (the ``baselines`` folder of ``taskbalance compare``) or ``<task>/`` (a ``--groups`` run of
    one-task groups); ``ValueError`` naming the missing file."""
    from taskbalance.training.rundir import load_results_file

    out: Metrics = {}
    root = Path(folder)
    for task in tasks:
        candidates = [root / task / f"seed{seed}" / "results.json", root / task / "results.json"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(
                f"no single-task baseline of {task!r} in {str(root)!r}: expected "
                f"{candidates[0]} or {candidates[1]}"
            )
        results = load_results_file(path)
        _check_baseline(path, results.get("config") or {}, task, seed)
        test = results.get("test") or {}
        if task not in test:
            raise ValueError(f"{path} has no test metrics of {task!r}")
        out[task] = dict(test[task])
    return out


def _check_baseline(path: Path, config: Mapping[str, Any], task: str, seed: int) -> None:
    """A baseline is a single-task run of ``task`` with the groups' seed (Δm% pairs seeds)."""
    ran = config.get("seed")
    if ran is not None and ran != seed:
        raise ValueError(
            f"{path} is a run of seed {ran}; the groups train seed {seed}: give single-task "
            f"runs of seed {seed} (compare's baselines/<task>/seed{seed}/)"
        )
    tasks = config.get("tasks")
    if tasks is not None and list(tasks) != [task]:
        raise ValueError(
            f"{path} is not a single-task run of {task!r} (its tasks are {list(tasks)}); "
            "Δm% needs one network per task as the baseline"
        )


@dataclass
class GroupedResult:
    """The combined model of a ``--groups`` run (see the module docstring)."""

    groups: list[list[str]]
    test: Metrics  # per task, from its group's run
    group_parameters: list[int]
    group_seconds_per_step: list[float]
    shared_parameters: int  # one network over all the grouped tasks (counted, not trained)
    seconds: float  # wall time of the group runs
    out_dir: Path
    delta_m: dict[str, Any] | None = None  # {"overall", "per_task"} vs the baselines
    shared_test: Metrics | None = None
    shared_seconds_per_step: float | None = None
    shared_delta_m: dict[str, Any] | None = None

    @property
    def num_parameters(self) -> int:
        return sum(self.group_parameters)

    @property
    def seconds_per_step(self) -> float:
        return sum(self.group_seconds_per_step)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": self.groups, "test": self.test,
            "num_parameters": self.num_parameters, "group_parameters": self.group_parameters,
            "seconds_per_step": self.seconds_per_step,
            "group_seconds_per_step": self.group_seconds_per_step,
            "shared_parameters": self.shared_parameters, "seconds": self.seconds,
            "delta_m": self.delta_m, "shared_test": self.shared_test,
            "shared_seconds_per_step": self.shared_seconds_per_step,
            "shared_delta_m": self.shared_delta_m,
        }  # fmt: skip


def _delta(test: Metrics, baseline: Metrics, directions: Directions) -> dict[str, Any]:
    from taskbalance.tasks import task_delta

    breakdown = task_delta(test, baseline, directions)
    return {"overall": breakdown.overall, "per_task": breakdown.per_task}


def _shared_parameters(config: Any, tasks: Sequence[str]) -> int:
    """Parameters of one network of the data's default model used by ``tasks`` (the model is
    built without its data)."""
    from taskbalance.training.results import count_parameters
    from taskbalance.training.sources import data_model

    model = data_model(config)
    return count_parameters(model, list(tasks))


def _run_one(base: Any, tasks: Sequence[str], folder: Path, overwrite: bool, log: Any) -> Any:
    """The run of one network: through the runner (a finished run reused, a killed one resumed,
    one of other settings refused naming ``--overwrite``), or trained afresh with ``overwrite``."""
    from taskbalance.training import run, train

    config = {**base.to_dict(), "tasks": list(tasks), "out_dir": str(folder)}
    if overwrite:
        return train(config, overwrite=True)
    return run(config, log=log, label=folder.name)


def train_groups(
    config: Mapping[str, Any],
    groups: Sequence[Sequence[str]],
    *,
    baselines: str | Path | None = None,
    shared: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> GroupedResult:
    """Train one network per group (``config`` is a TrainConfig dict whose ``out_dir`` is the
    parent folder; it must not set ``tasks``) and combine them; see the module docstring."""
    from taskbalance.training import TrainConfig
    from taskbalance.training.sources import data_tasks

    base = TrainConfig.from_dict(dict(config))
    if base.tasks is not None:
        raise ValueError("give the tasks with --groups only (the config sets 'tasks' too)")
    if base.out_dir is None:
        raise ValueError("training by groups needs an 'out_dir' folder")
    task_objects = {t.name: t for t in data_tasks(base)}
    check_groups(groups, list(task_objects))
    out = Path(base.out_dir)
    everyone = [t for g in groups for t in g]
    # Read before training: a missing baseline is refused before minutes of work.
    baseline = load_baselines(baselines, everyone, base.seed) if baselines is not None else None
    test: Metrics = {}
    params, seconds_per_step = [], []
    start = time.perf_counter()
    for group in groups:
        log(f"group {group_folder(group)}: one network for {len(group)} task(s)")
        result = _run_one(base, group, out / group_folder(group), overwrite, log)
        test.update({t: dict((result.test or {})[t]) for t in group})
        params.append(int(result.num_parameters))
        seconds_per_step.append(float(result.seconds_per_step))
    grouped = GroupedResult(
        groups=[list(g) for g in groups], test=test, group_parameters=params,
        group_seconds_per_step=seconds_per_step,
        shared_parameters=_shared_parameters(base, everyone),
        seconds=time.perf_counter() - start, out_dir=out,
    )  # fmt: skip
    if shared:
        log(f"shared: one network for all {len(everyone)} grouped tasks")
        result = _run_one(base, everyone, out / "shared", overwrite, log)
        grouped.shared_test = {t: dict((result.test or {})[t]) for t in everyone}
        grouped.shared_seconds_per_step = float(result.seconds_per_step)
        grouped.shared_parameters = int(result.num_parameters)
    if baseline is not None:
        directions = {t: dict(task_objects[t].higher_is_better) for t in everyone}
        grouped.delta_m = _delta(grouped.test, baseline, directions)
        if grouped.shared_test is not None:
            grouped.shared_delta_m = _delta(grouped.shared_test, baseline, directions)
    return grouped


def _fmt_delta(delta: Mapping[str, Any] | None, task: str | None = None) -> str:
    if delta is None:
        return "-"
    value = delta["overall"] if task is None else delta["per_task"].get(task)
    return "-" if value is None else f"{value:+.2f}"


def _markdown(result: GroupedResult) -> str:
    from .tables import markdown_table

    groups = " ; ".join(",".join(g) for g in result.groups)
    has_shared = result.shared_test is not None
    head = ["task", "group", "metrics", "Δ% vs single-task"]
    if has_shared:
        head += ["shared network metrics", "shared Δ%"]
    rows = []
    for g, group in enumerate(result.groups):
        for task in group:
            row = [task, str(g + 1), _metrics_cell(result.test[task])]
            row.append(_fmt_delta(result.delta_m, task))
            if has_shared and result.shared_test is not None:
                row.append(_metrics_cell(result.shared_test[task]))
                row.append(_fmt_delta(result.shared_delta_m, task))
            rows.append(row)
    lines = [f'# train --groups "{groups}"', "", *markdown_table(head, rows)]
    total = f"Δm% (lower is better): groups {_fmt_delta(result.delta_m)}"
    if has_shared:
        total += f", shared network {_fmt_delta(result.shared_delta_m)}"
    if result.delta_m is None:
        total += " (give --baselines for Δm%)"
    lines += ["", total, ""]
    lines += _compute_lines(result)
    return "\n".join(lines) + "\n"


def _metrics_cell(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{m} {v:.4f}" for m, v in metrics.items())


def _compute_lines(result: GroupedResult) -> list[str]:
    params = " + ".join(str(p) for p in result.group_parameters)
    lines = [
        f"Compute: {len(result.groups)} networks, {result.num_parameters} parameters "
        f"({params}) against {result.shared_parameters} for one shared network "
        f"({result.num_parameters / result.shared_parameters:.2f}x); "
        f"{result.seconds_per_step * 1e3:.2f} ms per training step of all group networks",
    ]
    if result.shared_seconds_per_step is not None:
        ratio = result.seconds_per_step / result.shared_seconds_per_step
        shared_ms = result.shared_seconds_per_step * 1e3
        lines[0] += f" against {shared_ms:.2f} ms shared ({ratio:.2f}x)"
    lines[0] += f"; group runs took {result.seconds:.1f} s."
    return lines


def write_grouped_report(result: GroupedResult) -> Path:
    """Write ``groups.json`` and ``groups.md`` to the result's folder; return the markdown's
    path."""
    result.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result.out_dir / "groups.json", result.to_json())
    atomic_write_text(result.out_dir / "groups.md", _markdown(result))
    return result.out_dir / "groups.md"
