"""Batches and loaders: the ``(inputs, targets, masks)`` convention, moving batches to the
device, per-task label masks, and the seeded loaders of a run."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = [
    "batch_len",
    "loader_len",
    "make_loaders",
    "mask_for",
    "resolve_workers",
    "split_batch",
    "to_device",
    "unpack_batch",
]

#: Most workers "auto" starts: reading per-sample .npy or PNG files of a batch of 8-64 images
#: takes a few of them to keep ahead of a GPU step (benchmarks/bench_real_loading.py).
MAX_AUTO_WORKERS = 4
WORKERS_ENV = "TASKBALANCE_NUM_WORKERS"


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def split_batch(batch: Any, parts: int) -> list[Any]:
    """``parts`` disjoint batches covering ``batch``: every tensor in it cut along dim 0 into
    consecutive slices of sizes differing by at most one (views, no copy). The parts of a
    shuffled batch are independent samples (what double-sampling methods need). A batch of
    fewer than ``parts`` samples (an epoch's last) gives ``[]`` and a warning: the Trainer
    skips it (counted in the epoch's ``skipped_steps``)."""
    size = batch_len(batch)
    if size < parts:
        warnings.warn(
            f"skipped a batch of {size} sample(s): it cannot be split into {parts} independent "
            f"parts (a batch size that leaves no such last batch avoids it)",
            RuntimeWarning,
            stacklevel=3,
        )
        return []

    def cut(obj: Any, i: int) -> Any:
        if isinstance(obj, Tensor) and obj.dim() and obj.shape[0] == size:
            return obj.tensor_split(parts)[i]
        if isinstance(obj, Mapping):
            return {k: cut(v, i) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(cut(v, i) for v in obj)
        return obj

    return [cut(batch, i) for i in range(parts)]


def unpack_batch(batch: Any) -> tuple[Any, Mapping[str, Tensor], Mapping[str, Tensor] | None]:
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        inputs, targets = batch[0], batch[1]
        masks = batch[2] if len(batch) == 3 else None
        if isinstance(targets, Mapping) and (masks is None or isinstance(masks, Mapping)):
            return inputs, targets, masks
    raise ValueError(
        "each batch must be (inputs, targets, masks) with targets and masks dicts keyed by task "
        f"name (or (inputs, targets)); got {type(batch).__name__}"
    )


def batch_len(batch: Any) -> int:
    """Number of samples in a batch (for samples/s), read from tensor metadata only."""
    inputs = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if isinstance(inputs, Mapping):
        inputs = next(iter(inputs.values()), None)
    return int(inputs.shape[0]) if isinstance(inputs, Tensor) and inputs.dim() else 0


def loader_len(loader: Any) -> int | None:
    """Batches in ``loader``, ``None`` when it has no length (an iterable)."""
    try:
        return len(loader)
    except TypeError:
        return None


def mask_for(
    masks: Mapping[str, Tensor] | None, name: str, device: torch.device
) -> tuple[bool, Tensor | None]:
    """``(any_labelled, mask_or_None)``; decided on the CPU copy of the mask (no device sync)."""
    if masks is None or name not in masks:
        return True, None
    mask = masks[name]
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.device.type == "cpu":
        if mask.dtype != torch.bool:
            mask = mask != 0
        if not bool(mask.any()):
            return False, None
        if bool(mask.all()):
            return True, None
    return True, mask.to(device, non_blocking=True)


def resolve_workers(num_workers: int | str, source: Any, device: str = "cuda") -> int:
    """The DataLoader workers for ``num_workers`` (an int, or ``"auto"``), a data source and
    the run's device type.

    ``"auto"``: ``$TASKBALANCE_NUM_WORKERS`` when set; else 0 unless the source reads its files
    sample by sample (``source.reads_from_disk``, true for the registered real datasets; the
    in-memory benchmarks and users' own data load in the main process, as before); else, on an
    accelerator, half the usable
    CPUs (1 to :data:`MAX_AUTO_WORKERS`), and on the CPU a quarter of them (0 below 4 CPUs):
    there the model's threads need the cores, and a worker on a core they use is slower than
    none (``benchmarks/bench_real_loading.py``, 2 busy CPUs: NYUv2 101 samples/s without a
    worker, 58 with one).
    """
    if num_workers != "auto":
        return int(num_workers)
    import os

    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        if not env.isdigit():
            raise ValueError(f"${WORKERS_ENV} must be an integer >= 0, got {env!r}")
        return int(env)
    if not getattr(source, "reads_from_disk", False):
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    if device == "cpu":
        return min(MAX_AUTO_WORKERS, cpus // 4)
    return max(1, min(MAX_AUTO_WORKERS, cpus // 2))


def make_loaders(
    train_set: Any,
    val_set: Any,
    test_set: Any = None,
    *,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader | None, DataLoader | None]:
    """The loaders of a run: training shuffled by a generator seeded with ``seed`` (a last batch
    of a single sample is dropped, for BatchNorm), validation and test in order with
    ``eval_batch_size`` (default ``batch_size``); ``None`` sets give ``None`` loaders. The
    training loader's ``generator`` is the shuffling state a checkpoint saves. Workers prefetch
    and are started per epoch (see :func:`~taskbalance.data.loading.batch_loader`)."""
    from taskbalance.data.loading import batch_loader

    generator = torch.Generator()
    generator.manual_seed(seed)
    n_train = len(train_set)
    # In-memory benchmarks are indexed a batch at a time (same batches as per-sample loading).
    train_loader = batch_loader(
        train_set,
        batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=n_train > batch_size and n_train % batch_size == 1,
    )
    eval_bs = eval_batch_size or batch_size

    def ordered(dataset: Any) -> DataLoader | None:
        if dataset is None:
            return None
        return batch_loader(dataset, eval_bs, num_workers=num_workers, pin_memory=pin_memory)

    return train_loader, ordered(val_set), ordered(test_set)
