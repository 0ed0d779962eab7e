"""The data source of an experiment file: the user's splits and tasks, and their model factory
checked against both (names, output shapes) before anything trains."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .imports import call_factory, import_callable
from .schema import ExperimentFile, parse_experiment_file
from .tasks import build_tasks

__all__ = ["ExperimentSource", "experiment_tasks", "load_experiment"]

SPLITS = ("train", "val", "test")


class ExperimentSource:
    """A user's experiment as a data source (the interface of the built-in benchmarks).

    Attributes:
        name: the experiment's ``name``; ``path``: its file; ``description``.
        tasks, task_names: the tasks built from the file's entries, in order.
        train, val, test: the datasets the data factory returned (items ``(inputs, targets,
            masks)`` or ``(inputs, targets)``).
        input_shape: shape of one training input (``None`` when inputs are not a tensor).
    """

    def __init__(
        self,
        file: ExperimentFile,
        tasks: Sequence[Any],
        model_factory: Callable[..., Any],
        splits: Mapping[str, Any],
    ) -> None:
        self.file = file
        self.name, self.path, self.description = file.name, file.path, file.description
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.train, self.val, self.test = (splits[s] for s in SPLITS)
        self._model_factory = model_factory
        with preserved_rng():
            first = self.train[0][0]
        self.input_shape = tuple(first.shape) if isinstance(first, torch.Tensor) else None

    def build_model(self, **options: Any) -> nn.Module:
        """A fresh model from the file's factory: ``model(**{**model_options, **options})``.

        The model is checked on one training sample (eval mode, no gradient, random states
        left as they were): it must return one prediction per task whose shape fits the task.
        """
        model = _factory_model(self.file, self._model_factory, options)
        self._check_outputs(model)
        return model

    def _check_outputs(self, model: nn.Module) -> None:
        from torch.utils.data import default_collate

        file = self.file
        with preserved_rng():
            inputs, targets, masks = _unpack(default_collate([self.train[0]]))
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    outputs = model(inputs)
            except (RuntimeError, TypeError, ValueError) as err:
                shape = list(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
                raise file.error(
                    "model",
                    f"the model of {file.model} fails on one training sample (inputs {shape}): "
                    f"{' '.join(str(err).split())}",
                ) from err
            finally:
                model.train(was_training)
        if not isinstance(outputs, Mapping) or set(outputs) != set(self.task_names):
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise file.error(
                "model",
                f"the model of {file.model} must return a dict with one prediction per task "
                f"{self.task_names}; it returned {got}",
            )
        for task in self.tasks:
            try:
                task.validate(outputs[task.name], targets[task.name], masks.get(task.name))
            except ValueError as err:
                raise file.error("model", f"on one training sample: {err}") from None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS)
        return f"ExperimentSource({self.name!r}, tasks={self.task_names}, {sizes})"


def experiment_tasks(path: str | os.PathLike[str]) -> list[Any]:
    """The tasks of an experiment file (task factories imported; no data or model built)."""
    return build_tasks(parse_experiment_file(path))


def experiment_model(path: str | os.PathLike[str], **options: Any) -> nn.Module:
    """A fresh model of an experiment file's factory, without building its data (so unchecked
    on a training sample, unlike :meth:`ExperimentSource.build_model`): for counting parameters.
    """
    file = parse_experiment_file(path)
    return _factory_model(file, import_callable(file, "model", file.model), options)


def _factory_model(
    file: ExperimentFile, factory: Callable[..., Any], options: Mapping[str, Any]
) -> nn.Module:
    """``factory(**{**model_options, **options})``, an ``nn.Module`` with shared parameters."""
    merged = {**file.model_options, **options}
    model = call_factory(file, "model", file.model, factory, (), merged, "model_options")
    if not isinstance(model, nn.Module):
        raise file.error(
            "model",
            f"{file.model} returned a {type(model).__name__}; it must return a torch "
            "nn.Module (e.g. a taskbalance.models.MultiTaskModel)",
        )
    if not any(callable(getattr(model, m, None)) for m in ("shared_modules", "shared_parameters")):
        raise file.error(
            "model",
            f"{file.model} returned a {type(model).__name__} without shared_parameters(); "
            "return a taskbalance.models.MultiTaskModel, or give the module a method "
            "shared_parameters() listing the parameters the tasks share",
        )
    return model


def load_experiment(path: str | os.PathLike[str]) -> ExperimentSource:
    """Read an experiment file, import its factories, build its tasks and its data splits.

    Raises:
        FileNotFoundError: no such file.
        ExperimentError: a problem with the file or with what a factory returns; the message
            names the key and what was expected.
    """
    file = parse_experiment_file(path)
    tasks = build_tasks(file)
    model_factory = import_callable(file, "model", file.model)
    data_factory = import_callable(file, "data", file.data)
    splits = call_factory(
        file, "data", file.data, data_factory, (), file.data_options, "data_options"
    )
    _check_splits(file, splits)
    return ExperimentSource(file, tasks, model_factory, splits)


def _check_splits(file: ExperimentFile, splits: Any) -> None:
    """The data factory returned ``{"train", "val", "test"}`` of non-empty map-style datasets
    whose items carry one target per task."""
    if not isinstance(splits, Mapping):
        raise file.error(
            "data",
            f"{file.data} returned a {type(splits).__name__}; it must return a dict "
            '{"train": dataset, "val": dataset, "test": dataset}',
        )
    for split in SPLITS:
        if split not in splits:
            raise file.error(
                "data", f"{file.data} returned no {split!r} split (it gave {sorted(splits)}); "
                "it must return the splits train, val and test",
            )  # fmt: skip
    extra = sorted(set(splits) - set(SPLITS))
    if extra:
        raise file.error("data", f"{file.data} returned unknown split(s) {extra}; the splits "
                         "are train, val and test")  # fmt: skip
    for split in SPLITS:
        _check_dataset(file, split, splits[split])


def _check_dataset(file: ExperimentFile, split: str, dataset: Any) -> None:
    what = f"split {split!r} of {file.data}"
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise file.error(
            "data",
            f"{what} is a {type(dataset).__name__}; it must be a map-style dataset (len(ds) and "
            "ds[i], e.g. taskbalance.data.MultiTaskDataset)",
        )
    if len(dataset) == 0:
        raise file.error("data", f"{what} is empty")
    with preserved_rng():
        item = dataset[0]
    try:
        _, targets, masks = _unpack(item)
    except ValueError as err:
        raise file.error("data", f"{what}: {err}") from None
    names = [t["name"] for t in file.tasks]
    missing = [n for n in names if n not in targets]
    extra = [n for n in targets if n not in names]
    if missing or extra:
        raise file.error(
            "data",
            f"{what}: the targets of an item are {list(targets)} but the tasks are {names} "
            f"(missing: {missing or 'none'}, unknown: {extra or 'none'}); the target names "
            "must be the task names",
        )
    unknown = [n for n in masks if n not in names]
    if unknown:
        raise file.error("data", f"{what}: masks given for unknown task(s) {unknown}")


def _unpack(item: Any) -> tuple[Any, Mapping[str, Any], Mapping[str, Any]]:
    ok = isinstance(item, (tuple, list)) and len(item) in (2, 3)
    if ok and isinstance(item[1], Mapping) and (len(item) == 2 or isinstance(item[2], Mapping)):
        return item[0], item[1], (item[2] if len(item) == 3 else {})
    raise ValueError(
        "an item must be (inputs, targets) or (inputs, targets, masks) with targets and masks "
        f"dicts keyed by task name; got {type(item).__name__}"
        + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
    )


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Random states of torch (CPU), numpy and ``random`` as they were before the block: the
    checks read samples (which may draw augmentations) without changing a run's random stream."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
