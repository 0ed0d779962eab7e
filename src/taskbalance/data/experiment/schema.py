"""Reading and checking an experiment file: the YAML that names a user's model factory, data
factory and tasks (the schema is documented in ``docs/experiments.md``).

:func:`parse_experiment_file` checks the file's structure only (keys, types, task entries) and
imports nothing, so a config can be checked against the task names of an experiment cheaply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskbalance.validation import did_you_mean

__all__ = ["ExperimentError", "ExperimentFile", "parse_experiment_file"]

#: Top-level keys: key -> what it must be (the wording of the error messages).
TOP_KEYS: dict[str, str] = {
    "name": "a name of letters, digits, '.', '_' or '-'",
    "description": "a string",
    "python_path": "a folder or a list of folders (relative to the experiment file)",
    "model": "'module:attribute' of the model factory, e.g. mypkg.nets:build",
    "model_options": "a mapping of keyword arguments of the model factory",
    "data": "'module:attribute' of the data factory, e.g. mypkg.data:splits",
    "data_options": "a mapping of keyword arguments of the data factory",
    "tasks": "a non-empty list of task entries ({name: ..., kind: ...} or {name: ..., "
    "factory: ...})",
}
REQUIRED_KEYS = ("name", "model", "data", "tasks")
#: Keys every task entry may have besides the options of its kind.
TASK_COMMON_KEYS = ("name", "kind", "factory", "options", "primary_metric")

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ExperimentError(ValueError):
    """A problem with an experiment file or with what its factories return; the message names
    the file, the key and what was expected."""

    def __init__(self, path: str | os.PathLike[str], key: str | None, problem: str) -> None:
        where = f"experiment file {str(path)!r}" + (f", key {key!r}" if key else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.key, self.problem = Path(path), key, problem


@dataclass(frozen=True)
class ExperimentFile:
    """The checked content of an experiment file (nothing of the user's imported yet).

    ``tasks`` are the raw task entries (each a dict with ``name`` and ``kind`` or ``factory``);
    ``python_path`` holds absolute folders.
    """

    path: Path
    name: str
    description: str
    python_path: tuple[Path, ...]
    model: str
    model_options: dict[str, Any]
    data: str
    data_options: dict[str, Any]
    tasks: tuple[dict[str, Any], ...]

    @property
    def task_names(self) -> list[str]:
        """The task names, in the file's order."""
        return [entry["name"] for entry in self.tasks]

    def error(self, key: str | None, problem: str) -> ExperimentError:
        """An :class:`ExperimentError` about ``key`` of this file."""
        return ExperimentError(self.path, key, problem)


suggestion = did_you_mean  # `` (did you mean 'x'?)`` for the closest choice, or ``""``


def parse_experiment_file(path: str | os.PathLike[str]) -> ExperimentFile:
    """Read ``path`` and check its keys, their types and the task entries.

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ExperimentError: invalid YAML, an unknown key (with the closest valid one), a missing
            key, a value of the wrong type, a malformed task entry.
    """
    path = Path(path)
    data = _read_yaml(path)
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        key = str(unknown[0])
        raise ExperimentError(
            path,
            key,
            f"unknown key{suggestion(key, list(TOP_KEYS))}; valid keys: {', '.join(TOP_KEYS)}",
        )
    for key in REQUIRED_KEYS:
        if key not in data:
            raise ExperimentError(path, key, f"missing; give {TOP_KEYS[key]}")
    name = data["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ExperimentError(path, "name", f"must be {TOP_KEYS['name']}, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ExperimentError(path, "description", f"must be a string, got {description!r}")
    return ExperimentFile(
        path=path,
        name=name,
        description=description,
        python_path=_python_path(path, data.get("python_path")),
        model=_target(path, "model", data["model"]),
        model_options=_options(path, "model_options", data.get("model_options")),
        data=_target(path, "data", data["data"]),
        data_options=_options(path, "data_options", data.get("data_options")),
        tasks=_task_entries(path, data["tasks"]),
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    from taskbalance.data.yaml_text import load_yaml

    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"experiment file {str(path)!r} {what}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ExperimentError(path, None, f"not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, Mapping):
        raise ExperimentError(
            path,
            None,
            f"must hold a mapping of keys ({', '.join(REQUIRED_KEYS)}, ...), got "
            f"{type(data).__name__}",
        )
    return dict(data)


def _target(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _TARGET_RE.match(value.strip()):
        what = TOP_KEYS.get(key, "'module:attribute' of a function returning a Task")
        raise ExperimentError(path, key, f"must be {what}, got {value!r}")
    return value.strip()


def _options(path: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ExperimentError(path, key, f"must be {TOP_KEYS[key]}, got {value!r}")
    return dict(value)


def _python_path(path: Path, value: Any) -> tuple[Path, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ExperimentError(path, "python_path", f"must be {TOP_KEYS['python_path']}, "
                              f"got {value!r}")  # fmt: skip
    folders = []
    for item in items:
        folder = (path.parent / item).resolve()
        if not folder.is_dir():
            raise ExperimentError(
                path, "python_path", f"{item!r} is not a folder (looked for {str(folder)!r})"
            )
        folders.append(folder)
    return tuple(folders)


def _task_entries(path: Path, value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise ExperimentError(path, "tasks", f"must be {TOP_KEYS['tasks']}, got {value!r}")
    entries: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        key = f"tasks[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ExperimentError(
                path, key, f"must be a mapping with a string 'name', got {entry!r}"
            )
        if not all(isinstance(k, str) for k in entry):
            raise ExperimentError(path, key, f"keys must be strings, got {list(entry)}")
        has_kind, has_factory = "kind" in entry, "factory" in entry
        if has_kind == has_factory:
            raise ExperimentError(
                path,
                key,
                f"task {entry['name']!r} needs exactly one of 'kind' (a built-in task kind) "
                "or 'factory' ('module:attribute' of a function returning a Task)",
            )
        if has_factory:
            entry = {**entry, "factory": _target(path, f"{key}.factory", entry["factory"])}
            extra = [k for k in entry if k not in TASK_COMMON_KEYS]
            if extra:
                raise ExperimentError(
                    path,
                    f"{key}.{extra[0]}",
                    "unknown key of a factory task; its keys are name, factory, options (the "
                    "factory's keyword arguments) and primary_metric",
                )
        elif "options" in entry:
            raise ExperimentError(
                path, f"{key}.options", "only a factory task has 'options'; give the options "
                f"of kind {entry['kind']!r} as keys of the entry itself",
            )  # fmt: skip
        entries.append(dict(entry))
    names = [e["name"] for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ExperimentError(path, "tasks", f"task name {twice[0]!r} is given twice")
    return tuple(entries)
