"""DataLoaders that index an in-memory dataset one batch at a time.

A :class:`~taskbalance.data.MultiTaskDataset` holds its splits as tensors, so a batch is one
indexing operation per tensor (``inputs[idx]``, ``targets[t][idx]``, ``masks[t][idx]``). The
default DataLoader path instead calls ``__getitem__`` once per sample and collates ``B`` tuples of
dicts: measured at 0.55 ms of a 14 ms ``multidigits`` step (about 4 %); batch-level indexing is
about 7x faster (``benchmarks/bench_loading.py``). :func:`batch_loader` passes a
:class:`~torch.utils.data.BatchSampler` as the sampler (``batch_size=None``), so the dataset
receives each batch's index list. The sampler draws from the same generator in the same order as
``DataLoader(shuffle=True, generator=g)``, so batches, shuffling state and checkpoints are exactly
those of the per-sample loader.

Other datasets (wrappers such as pseudo-label views, user datasets) keep the per-sample path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from taskbalance.data.dataset import MultiTaskDataset

__all__ = ["batch_indexable", "batch_loader", "loader_batch_size"]

#: Batches each worker keeps ready (DataLoader's default is 2): disk reads of a batch vary in
#: time, a deeper queue keeps the model fed through slow ones.
PREFETCH_FACTOR = 4


def batch_indexable(dataset: Any) -> bool:
    """Whether ``dataset[list_of_indices]`` returns a whole collated batch (exact type check:
    wrappers that forward attributes to a MultiTaskDataset index sample by sample)."""
    return type(dataset) is MultiTaskDataset


def batch_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset``: batch-level indexing where the dataset supports it
    (:func:`batch_indexable`), the usual per-sample collation otherwise; same batches either way.
    With ``num_workers > 0`` each worker prefetches :data:`PREFETCH_FACTOR` batches.

    Workers are started for each epoch, never persistent: a persistent loader draws its
    iterator's base seed from ``generator`` (or, without one, from torch's global generator) in
    the first epoch only, so from the second epoch on its shuffles and the global random stream
    would differ from those of a loader without workers and of a run resumed from a checkpoint.
    Starting the workers costs milliseconds per epoch (``benchmarks/bench_real_loading.py``).
    """
    workers: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        workers["prefetch_factor"] = PREFETCH_FACTOR
    if not batch_indexable(dataset):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            **workers,
        )
    sampler: Any = (
        RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    )
    return DataLoader(
        dataset,
        batch_size=None,  # the sampler yields whole batches of indices
        sampler=BatchSampler(sampler, batch_size, drop_last),
        generator=generator,  # the iterator's base seed is drawn from it, as with shuffle=True
        **workers,
    )


def loader_batch_size(loader: Any, default: int = 64) -> int:
    """The batch size of a loader from :func:`batch_loader` (or any DataLoader)."""
    size = getattr(loader, "batch_size", None)
    for part in ("sampler", "batch_sampler"):
        if size is None:
            size = getattr(getattr(loader, part, None), "batch_size", None)
    return int(size) if size else default
