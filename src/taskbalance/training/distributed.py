"""Training over the ranks of a process group: who is rank 0, which samples each rank sees,
and evaluation metrics reduced exactly.

* :func:`init_from_environment` joins the group ``torchrun`` describes (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``...): NCCL when CUDA is available, gloo otherwise.
* :class:`UnionBatchSampler`: every epoch one permutation of the dataset (seed + epoch, the same
  on every rank); rank r takes positions ``r, r + R, r + 2R, ...``. Local batches of ``b``
  samples then form, step by step, exactly the batches of ``b·R`` consecutive samples of that
  permutation: the union batch of a step is what one process with batch ``b·R`` would draw
  (the last one may be short and unequal across ranks; ``Balancer.backward(counts=...)``
  weights it exactly). No sample is repeated to pad a rank.
* :class:`UnionBatches`: local batches of given union batches (what the ``Trainer`` uses under
  ``torchrun``); :func:`check_all_ranks`: a failure on one rank raised on every rank.
* :func:`shard_indices`: an evaluation shard (``r::R``), every sample evaluated exactly once.
* :func:`reduce_metric`: sums, counts, histograms and confusion matrices of a metric summed
  over ranks (angles of an exact median gathered), so ``compute()`` gives the metric of the
  whole evaluation set, never an average of per-rank values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from taskbalance.tasks.metrics import Metric

__all__ = [
    "UnionBatchSampler",
    "UnionBatches",
    "check_all_ranks",
    "init_from_environment",
    "is_main_process",
    "rank_and_world",
    "reduce_metric",
    "reduce_task_metrics",
    "shard_indices",
]


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; ``False`` when not launched by torchrun.

    Default backend: NCCL when CUDA is available (each rank on ``cuda:LOCAL_RANK``), else gloo.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if "nccl" in backend:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def check_all_ranks(error: BaseException | None, group: Any = None, what: str = "") -> None:
    """A collective every rank reaches after a part that may fail on some ranks only: the rank
    that failed raises its own ``error``, every other rank raises ``RemoteRankError`` naming
    it, instead of waiting forever in the next collective."""
    from taskbalance.balancing.distributed import RemoteRankError

    rank, world = rank_and_world(group)
    if world > 1:
        flags = torch.zeros(world, dtype=torch.float64, device=_collective_device())
        flags[rank] = float(error is not None)
        dist.all_reduce(flags, group=group)
        bad = [r for r in range(world) if flags[r] > 0]
        if bad and error is None:
            raise RemoteRankError(
                f"rank(s) {bad} failed{' in ' + what if what else ''} (their error is raised "
                f"there); rank {rank} stops too instead of waiting for them"
            )
    if error is not None:
        raise error


def _collective_device() -> torch.device:
    """Where this rank's collective tensors live: its CUDA device under NCCL, else the CPU."""
    if dist.is_initialized() and "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes checkpoints and results."""
    return rank_and_world()[0] == 0


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s evaluation samples: every ``world``-th from ``rank`` (no padding)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}) for world size {world}, got {rank}")
    return list(range(rank, n, world))


class UnionBatchSampler(Sampler[int]):
    """This rank's share of one seeded permutation per epoch (see the module docstring).

    Call :meth:`set_epoch` before each epoch (the permutation is ``seed + epoch``'s).
    """

    def __init__(self, size: int, rank: int, world: int, seed: int, shuffle: bool = True) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}) for world size {world}, got {rank}")
        self.size, self.rank, self.world = size, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> Tensor:
        """The epoch's order of the whole dataset (the same on every rank)."""
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


class UnionBatches(Sampler[list[int]]):
    """This rank's local batches (lists of indices) of the union batches of ``batch_size``.

    Every epoch the dataset is put in one seeded order (``seed + epoch``, the same on every
    rank, as :class:`UnionBatchSampler`); its consecutive runs of ``batch_size`` samples are
    the union batches, and rank r's local batch is every R-th sample of one, from position r
    (local batches differ by at most one sample). The samples after the last full union batch
    are left out of that epoch (the order changes every epoch). So the union batches depend
    only on the seed, the epoch and ``batch_size``, never on the number of ranks: 1, 2 or 4
    ranks take the same steps. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.order = UnionBatchSampler(size, rank, world, seed)
        if batch_size < world:
            raise ValueError(
                f"batch_size {batch_size} is smaller than the {world} ranks: every rank needs a "
                "sample of each union batch; use a batch_size of at least the number of processes"
            )
        if size < batch_size:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {size} training samples: no union "
                "batch is full; use a smaller batch_size"
            )
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order.permutation().tolist()
        for k in range(len(self)):
            union = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield union[self.rank :: self.world]


def _torchmetrics_children(metric: Metric) -> list[Any]:
    from torchmetrics import Metric as TorchMetric
    from torchmetrics.utilities.data import dim_zero_sum

    children = [v for v in vars(metric).values() if isinstance(v, TorchMetric)]
    for child in children:
        for name, fx in child._reductions.items():
            if fx is not dim_zero_sum:
                raise ValueError(
                    f"{type(metric).__name__}: state {name!r} of {type(child).__name__} is not "
                    "a sum, so it cannot be reduced over ranks exactly"
                )
    return children


def reduce_metric(metric: Metric, group: Any = None) -> None:
    """Sum ``metric``'s accumulated states over the ranks of ``group`` (in place, once, before
    ``compute()``; a collective: every rank calls it, in the same order of metrics).

    The states of taskbalance's metrics are sums (counts, error sums, histograms, confusion
    matrices), so the reduced metric is the metric of the union of the ranks' samples. The
    torchmetrics parts stop syncing on their own (their reduction is done here).
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return
    children = _torchmetrics_children(metric)
    own = {k: v for k, v in vars(metric).items() if k.startswith("_") and isinstance(v, Tensor)}
    states: list[tuple[Any, str, Tensor]] = [(metric, k, v) for k, v in sorted(own.items())]
    for child in children:
        child.sync_on_compute = False
        states += [(child, name, getattr(child, name)) for name in sorted(child._defaults)]
    count = torch.tensor([float(metric._count)], dtype=torch.float64)
    device = next((t.device for _, _, t in states if t.device.type != "cpu"), count.device)
    flat = torch.cat([count.to(device), *[t.reshape(-1).double().to(device) for _, _, t in states]])
    dist.all_reduce(flat, group=group)
    metric._count = int(flat[0].item())
    at = 1
    for owner, name, t in states:
        part = flat[at : at + t.numel()].view_as(t)
        at += t.numel()
        value = part.round() if not t.is_floating_point() else part
        setattr(owner, name, value.to(dtype=t.dtype, device=t.device))
    angles = getattr(metric, "_angles", None)
    if isinstance(angles, list) and getattr(metric, "exact_median", False):
        local = torch.cat(angles) if angles else torch.zeros(0)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local.cpu(), group=group)
        metric._angles = [  # type: ignore[attr-defined]
            a.to(local.device) for a in gathered if a.numel()
        ]


def reduce_task_metrics(metrics: Any, group: Any = None) -> None:
    """:func:`reduce_metric` for every metric of a task's accumulator
    (:meth:`Task.new_metrics <taskbalance.tasks.Task.new_metrics>`), and its sample count."""
    _, world = rank_and_world(group)
    if world == 1:
        return
    for metric in metrics.metrics:
        reduce_metric(metric, group)
    n = torch.tensor([float(metrics.num_samples)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(n, group=group)
    metrics.num_samples = int(n.item())
