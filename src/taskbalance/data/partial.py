"""Partial labels: keep each task's labels on only a fraction of the training samples.

``load_benchmark(name, labels={"depth": 0.2})`` keeps depth labels on 20 % of the training samples
and every other task's labels on all of them; validation and test splits stay fully labelled.

How the labelled subsets are drawn: each task draws its own subset, uniformly at random without
replacement, with its own generator seeded from ``(seed, crc32(task name))``. So

* the subset of a task depends only on the seed, the task's name, its fraction and the dataset
  size -- not on which other tasks are partial or in which order they are given;
* the subsets of different tasks are independent draws, so they overlap only partly: with
  fractions ``a`` and ``b`` about ``a * b`` of the samples carry both labels;
* at a fixed seed the subsets are nested: the samples labelled at fraction 0.1 are also labelled
  at fraction 0.2 (the subset is a prefix of one fixed permutation).

The number kept is ``max(1, round(fraction * N))``. Unlabelled samples get ``mask = False`` and a
zero target of the same shape and dtype (see "Batches" in ``docs/architecture.md``). Samples that
were already unlabelled stay unlabelled.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from taskbalance.data.dataset import MultiTaskDataset
from taskbalance.validation import is_number

__all__ = ["apply_partial_labels", "labelled_subset", "validate_fractions"]


def validate_fractions(labels: Mapping[str, float], task_names: Iterable[str]) -> dict[str, float]:
    """Check ``labels`` (task -> fraction in (0, 1]); ``ValueError`` naming the bad entry."""
    names = list(task_names)
    if not isinstance(labels, Mapping):
        raise ValueError(
            f"labels must be a dict of task name -> fraction, got {type(labels).__name__}"
        )
    out: dict[str, float] = {}
    for task, fraction in labels.items():
        if task not in names:
            raise ValueError(f"labels: unknown task {task!r}; tasks are {names}")
        if not (is_number(fraction) or isinstance(fraction, np.floating)):
            raise ValueError(f"labels[{task!r}] must be a number in (0, 1], got {fraction!r}")
        value = float(fraction)
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(f"labels[{task!r}] must be a fraction in (0, 1], got {fraction!r}")
        out[task] = value
    return out


def labelled_subset(n: int, fraction: float, seed: int, task: str) -> np.ndarray:
    """``[n]`` bool mask: the samples of ``task`` that keep their label (see module docstring)."""
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    keep = max(1, int(round(fraction * n)))
    order = np.random.default_rng([int(seed), zlib.crc32(task.encode())]).permutation(n)
    mask[order[:keep]] = True
    return mask


def apply_partial_labels(
    dataset: MultiTaskDataset, labels: Mapping[str, float], *, seed: int = 0
) -> MultiTaskDataset:
    """A copy of ``dataset`` where each task in ``labels`` keeps only that fraction of labels.

    Args:
        dataset: the (training) dataset.
        labels: task name -> fraction in (0, 1]; tasks not listed keep all their labels.
        seed: selects the subsets (the benchmark's seed in :func:`load_benchmark`).

    Raises:
        ValueError: unknown task or fraction outside (0, 1].
    """
    fractions = validate_fractions(labels, dataset.task_names)
    n = len(dataset)
    masks = {
        task: dataset.masks[task] & torch.from_numpy(labelled_subset(n, fraction, seed, task))
        for task, fraction in fractions.items()
    }
    return dataset.with_masks(masks)
