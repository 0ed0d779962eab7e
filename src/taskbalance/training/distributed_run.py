"""What :func:`~taskbalance.training.train` does differently under ``torchrun`` (an initialised
process group): each rank's device, the run folder checked by rank 0 alone, and the loaders
(union batches for training, a shard of validation and test per rank)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader

from .distributed import UnionBatches, check_all_ranks, rank_and_world, shard_indices

__all__ = [
    "decide_on_rank0",
    "epoch_sampler",
    "in_process_group",
    "on_rank0",
    "rank_device",
    "union_loaders",
]


def in_process_group() -> bool:
    """Whether this process is a rank of an initialised default group (e.g. under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def rank_device(device: str) -> str:
    """``"cuda"`` means this rank's own GPU (``cuda:LOCAL_RANK``, set when joining the group)."""
    if str(device) == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def on_rank0(fn: Callable[[], Any], what: str) -> None:
    """Run ``fn`` on rank 0 only; its error is raised on every rank (no rank waits)."""
    error = None
    if rank_and_world()[0] == 0:
        try:
            fn()
        except Exception as exc:
            error = exc
    check_all_ranks(error, None, what)


def decide_on_rank0(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` computed on rank 0 (which alone reads the output folder) and sent to every
    rank, so every rank takes the same decision; its error is raised on every rank."""
    box: list[Any] = [None]
    error = None
    if rank_and_world()[0] == 0:
        try:
            box[0] = fn()
        except Exception as exc:
            error = exc
    check_all_ranks(error, None, what)
    dist.broadcast_object_list(box, src=0)
    return box[0]


def union_loaders(
    train_set: Any,
    val_set: Any,
    test_set: Any,
    *,
    batch_size: int,
    eval_batch_size: int | None,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader | None, DataLoader | None]:
    """This rank's loaders: training batches of the union batches of ``batch_size`` (seeded
    by ``seed`` and the epoch, :class:`UnionBatches`: set its epoch, see
    :func:`epoch_sampler`), validation and test shards (:func:`shard_indices`, every sample
    evaluated by one rank) in order."""
    rank, world = rank_and_world()
    sampler = UnionBatches(len(train_set), batch_size, rank, world, seed)
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    train_loader = _loader(train_set, sampler, options)
    eval_bs = eval_batch_size or batch_size

    def shard(dataset: Any) -> DataLoader | None:
        if dataset is None:
            return None
        part = shard_indices(len(dataset), rank, world)
        return _loader(dataset, BatchSampler(part, eval_bs, drop_last=False), options)

    return train_loader, shard(val_set), shard(test_set)


def epoch_sampler(loader: Any) -> UnionBatches | None:
    """The :class:`UnionBatches` of a loader from :func:`union_loaders` (``None``: another)."""
    for part in ("sampler", "batch_sampler"):
        found = getattr(loader, part, None)
        if isinstance(found, UnionBatches):
            return found
    return None


def _loader(dataset: Any, batches: Any, options: dict[str, Any]) -> DataLoader:
    """A DataLoader of the given batches of indices (one indexing per batch where the dataset
    supports it, as :func:`~taskbalance.data.loading.batch_loader`)."""
    from taskbalance.data.loading import batch_indexable

    if batch_indexable(dataset):
        return DataLoader(dataset, batch_size=None, sampler=batches, **options)
    return DataLoader(dataset, batch_sampler=batches, **options)
