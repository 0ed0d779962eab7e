"""The :class:`~taskbalance.tasks.Task` objects of an experiment file's task entries: a
registered kind with a preset (``kind: regression`` with the preset's options as keys of the
entry; kinds added with :func:`taskbalance.tasks.register_kind` count too) or a user factory
(``factory: mypkg.tasks:make`` called as ``make(name, **options)``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .imports import call_factory, import_callable
from .schema import TASK_COMMON_KEYS, ExperimentFile, suggestion

__all__ = ["build_tasks", "kind_options", "preset_kinds"]


def _presets() -> dict[str, Callable[..., Any]]:
    """Kind name -> its preset factory, for every registered kind that has one."""
    from taskbalance.tasks import find_kind, task_kinds

    presets = {}
    for name in task_kinds():
        kind = find_kind(name)
        if kind is not None and kind.preset is not None:
            presets[name] = kind.preset
    return presets


def preset_kinds() -> list[str]:
    """The kinds ``kind:`` accepts: the registered kinds with a preset (classification,
    regression, segmentation, ... in :mod:`taskbalance.tasks.presets`)."""
    return list(_presets())


def kind_options(kind: str) -> dict[str, inspect.Parameter]:
    """The options of a built-in kind: its preset's parameters after ``name``."""
    parameters = list(inspect.signature(_presets()[kind]).parameters.values())
    return {p.name: p for p in parameters[1:]}


def build_tasks(file: ExperimentFile) -> list[Any]:
    """One Task per entry of ``file.tasks``, in order (their factories imported and called)."""
    return [_build_task(file, index, entry) for index, entry in enumerate(file.tasks)]


def _build_task(file: ExperimentFile, index: int, entry: dict[str, Any]) -> Any:
    from taskbalance.tasks import Task

    key, name = f"tasks[{index}]", entry["name"]
    if "factory" in entry:
        target = entry["factory"]
        factory = import_callable(file, f"{key}.factory", target)
        options = entry.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise file.error(f"{key}.options", f"must be a mapping of keyword arguments of "
                             f"{target}, got {options!r}")  # fmt: skip
        task = call_factory(file, f"{key}.factory", target, factory, (name,), options,
                            f"{key}.options")  # fmt: skip
        if not isinstance(task, Task):
            raise file.error(
                f"{key}.factory",
                f"{target}({name!r}, ...) returned a {type(task).__name__}; it must return a "
                "taskbalance.tasks.Task",
            )
        if task.name != name:
            raise file.error(
                f"{key}.factory",
                f"{target} returned a Task named {task.name!r}; it must be named {name!r} "
                "(the entry's name, passed as the first argument)",
            )
    else:
        task = _kind_task(file, key, entry)
    return _with_primary(file, key, task, entry.get("primary_metric"))


def _kind_task(file: ExperimentFile, key: str, entry: dict[str, Any]) -> Any:
    kind, kinds = entry["kind"], preset_kinds()
    if kind not in kinds:
        raise file.error(
            f"{key}.kind",
            f"unknown task kind {kind!r}{suggestion(str(kind), kinds)}; kinds: "
            f"{', '.join(kinds)} (or give 'factory' instead)",
        )
    valid = kind_options(kind)
    options = {k: v for k, v in entry.items() if k not in TASK_COMMON_KEYS}
    for option in options:
        if option not in valid:
            hint = ""
            if option == "metrics":
                hint = (
                    "; a task's metrics come with its kind (docs/experiments.md lists them): "
                    "choose the one that selects the model with primary_metric, or give a "
                    "factory for other metrics"
                )
            raise file.error(
                f"{key}.{option}",
                f"unknown option of kind {kind!r}{suggestion(option, list(valid))}; its "
                f"options: {', '.join(valid) or 'none'}{hint}",
            )
    required = [n for n, p in valid.items() if p.default is inspect.Parameter.empty]
    missing = [n for n in required if n not in options]
    if missing:
        raise file.error(
            f"{key}.{missing[0]}", f"missing; kind {kind!r} needs {', '.join(required)}"
        )
    preset = _presets()[kind]
    target = f"{preset.__module__}.{preset.__name__}"
    return call_factory(file, key, target, preset, (entry["name"],), options, key)


def _with_primary(file: ExperimentFile, key: str, task: Any, primary: Any) -> Any:
    """``task`` with ``primary`` as the metric that selects the model (``None``: unchanged)."""
    from taskbalance.tasks import Task

    if primary is None or primary == task.primary_metric:
        return task
    names = task.metric_names
    if primary not in names:
        raise file.error(
            f"{key}.primary_metric",
            f"task {task.name!r} has no metric {primary!r}{suggestion(str(primary), names)}; "
            f"its metrics: {', '.join(names)}",
        )
    return Task(
        task.name,
        task.loss_fn,
        task.metrics,
        primary_metric=primary,
        kind=task.kind,
        ignore_value=task.ignore_value,
    )
