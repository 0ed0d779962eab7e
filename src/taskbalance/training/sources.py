"""Where a run's data comes from: one small dispatch from a :class:`TrainConfig` to a
:class:`~taskbalance.data.DataSource` (a built-in benchmark, a real dataset read from disk, or
the user's own experiment file).

Every part that builds a run's data (the runner, compare's timing and sharing passes, tune,
diagnose) goes through :func:`load_data`, so a new kind of source is one more branch here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from taskbalance.data.source import DataSource
    from taskbalance.tasks import Task

__all__ = ["data_model", "data_tasks", "load_data"]


def load_data(config: TrainConfig) -> DataSource:
    """The data of ``config``: ``dataset`` -> :func:`~taskbalance.data.load_dataset`, else the
    built-in ``benchmark`` (partial labels applied, pseudo-labels filled in); ``experiment`` ->
    :func:`~taskbalance.data.experiment.load_experiment`."""
    if config.experiment is not None:
        from taskbalance.data.experiment import load_experiment

        # a DataSource but for two types: its model is any nn.Module with shared parameters,
        # and input_shape is None when an input is not one tensor
        return cast("DataSource", load_experiment(config.experiment))
    if config.dataset is not None:
        return _real_dataset(config)
    return _builtin_benchmark(config)


def _benchmark_name(config: TrainConfig) -> str:
    if config.benchmark is None:
        raise ValueError(
            "config keys 'benchmark' and 'dataset' are both None and no data was handed to the "
            "runner: name a benchmark or a dataset"
        )
    return config.benchmark


def data_tasks(config: TrainConfig) -> list[Task]:
    """The tasks of ``config``'s data, without generating or reading any data."""
    if config.experiment is not None:
        from taskbalance.data.experiment import experiment_tasks

        return experiment_tasks(config.experiment)
    if config.dataset is not None:
        from taskbalance.data.registry import dataset_options, get_dataset_spec

        spec = get_dataset_spec(config.dataset)
        return list(spec.make_tasks(dataset_options(spec, config.dataset_options)))
    from taskbalance.data.benchmark import get_spec

    bench = get_spec(_benchmark_name(config))
    return list(bench.make_tasks(bench.resolve_size(config.size)))


def data_model(config: TrainConfig) -> Any:
    """The default model of ``config``'s data (with ``config.model_options``), without generating
    or reading any data; an experiment file's model is not checked on a training sample."""
    if config.experiment is not None:
        from taskbalance.data.experiment import experiment_model

        return experiment_model(config.experiment, **config.model_options)
    if config.dataset is not None:
        from taskbalance.data.registry import dataset_options, get_dataset_spec

        spec = get_dataset_spec(config.dataset)
        options = dataset_options(spec, config.dataset_options)
        return spec.make_model(options, dict(config.model_options))
    from taskbalance.data.benchmark import get_spec

    bench = get_spec(_benchmark_name(config))
    return bench.make_model(bench.resolve_size(config.size), dict(config.model_options))


def _real_dataset(config: TrainConfig) -> Any:
    from taskbalance.data.registry import load_dataset

    assert config.dataset is not None and config.data_root is not None  # TrainConfig checks
    return load_dataset(config.dataset, config.data_root, **(config.dataset_options or {}))


def _builtin_benchmark(config: TrainConfig) -> Any:
    from taskbalance.data import load_benchmark

    data_seed = config.seed if config.data_seed is None else config.data_seed
    bench = load_benchmark(
        _benchmark_name(config),
        seed=data_seed,
        size=config.size,
        cache_dir=config.cache_dir,
        labels=config.labels,
    )
    if config.pseudo_labels is not None:
        from taskbalance.data.pseudo_labels import with_pseudo_labels

        bench = with_pseudo_labels(bench, config.pseudo_labels)
    return bench
