"""Data: built-in generated benchmarks, partial labels, loaders for real dataset layouts.

Every dataset item is ``(inputs, targets: dict[str, Tensor], masks: dict[str, bool Tensor])``
(see "Batches" in ``docs/architecture.md``).

Built-in benchmarks (generated from a seed, cached as ``.npz``; nothing is downloaded):

* ``multidigits``: MultiMNIST-style two overlapping digits; tasks ``left``, ``right``.
* ``scenes``: NYUv2-like ray-cast indoor scenes; tasks ``segmentation``, ``depth``, ``normals``.
* ``pingpong``: TTNet-like table-tennis clips; tasks ``ball``, ``table``, ``events``.
* ``synthetic-mtl`` (and ``synthetic-mtl-0.0`` / ``-0.5`` / ``-0.9`` / ``-1.0``): the MMoE paper's
  two regression tasks with a tunable task correlation, tabular inputs; tasks ``y1``, ``y2``.

Real datasets already on disk: :class:`NYUv2`, :class:`Cityscapes` (preprocessed ``.npy`` layout
of MTAN / Nash-MTL / LibMTL) and :class:`Fingers` (Kaggle Fingers PNGs), registered by name:
``load_dataset("nyuv2", root)`` returns a :class:`RealDataSource` (tasks, splits, default model;
``docs/datasets.md``). Both it and :class:`Benchmark` satisfy the :class:`DataSource` protocol
the training runner builds on.

>>> bench = load_benchmark("scenes", size="tiny", labels={"depth": 0.2})  # doctest: +SKIP
>>> model = bench.build_model()  # doctest: +SKIP
"""

from taskbalance.data.benchmark import (
    Batch,
    Benchmark,
    BenchmarkSpec,
    MultiTaskDataset,
    SplitArrays,
    available_benchmarks,
    default_cache_dir,
    load_benchmark,
    register_benchmark,
)
from taskbalance.data.partial import apply_partial_labels, labelled_subset
from taskbalance.data.real import Cityscapes, Fingers, NYUv2
from taskbalance.data.registry import (
    available_datasets,
    get_dataset_spec,
    load_dataset,
    register_dataset,
)
from taskbalance.data.source import DatasetSpec, DataSource, RealDataSource

__all__ = [
    "Batch",
    "Benchmark",
    "BenchmarkSpec",
    "Cityscapes",
    "DataSource",
    "DatasetSpec",
    "Fingers",
    "MultiTaskDataset",
    "NYUv2",
    "RealDataSource",
    "SplitArrays",
    "apply_partial_labels",
    "available_benchmarks",
    "available_datasets",
    "default_cache_dir",
    "get_dataset_spec",
    "labelled_subset",
    "load_benchmark",
    "load_dataset",
    "register_benchmark",
    "register_dataset",
]
