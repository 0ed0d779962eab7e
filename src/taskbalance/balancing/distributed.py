"""Collectives of a distributed balancing step (``torch.distributed``; any backend).

The union batch of a step is the concatenation of every rank's local batch, in rank order.
Each task's union loss is the mean of its per-sample losses over the samples labelled for it::

    L_t = Σ_r n_t^r L_t^r / N_t,     N_t = Σ_r n_t^r,

where ``L_t^r`` is rank r's local loss (a mean over its ``n_t^r`` labelled samples) and
``n_t^r`` is given to :meth:`Balancer.backward` as ``counts`` (default: 1 for each task present,
which is the union mean when every rank has the same number of labelled samples per task). A task
is present in the step when some rank has a sample labelled for it. Every per-task quantity a
method sees is then that of the union batch: ``∇L_t = Σ_r c_t^r ∇L_t^r`` with the rank's share
``c_t^r = n_t^r / N_t`` (0 where the task is absent on rank r).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistributedContext",
    "EmptyStepError",
    "RemoteRankError",
    "StepHeader",
    "resolve_group",
]


class RemoteRankError(RuntimeError):
    """Another rank failed in the same balancing step (its own error is raised on that rank)."""


class EmptyStepError(ValueError):
    """No rank has a loss for any task in this step; raised on every rank at the same point
    (right after the step's first collective), so every rank can skip the batch together."""


def resolve_group(process_group: Any) -> DistributedContext | None:
    """The context for ``process_group``: ``"auto"`` = the default group when one is
    initialised with more than one rank; ``None`` = one process; else a ``ProcessGroup``."""
    if process_group is None:
        return None
    if isinstance(process_group, str):
        if process_group != "auto":
            raise ValueError(
                f"process_group must be 'auto', None or a torch.distributed ProcessGroup, "
                f"got {process_group!r}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size() < 2:
            return None
        return DistributedContext(None)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "a process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (or pass process_group=None)"
        )
    return DistributedContext(process_group)


@dataclass
class StepHeader:
    """What every rank knows after the first collective of a step (identical on all ranks)."""

    counts: Tensor  # N_t, float64 [T] on the losses' device
    losses: Tensor  # union losses L_t (0 where absent), float64 [T]
    present: Tensor  # bool [T]: N_t > 0
    share: Tensor  # this rank's c_t^r = n_t^r / N_t, float64 [T]
    everywhere: bool  # every task present in the step has a loss on every rank
    reach_agrees: bool  # every rank's losses reach the same number of shared parameters


def _agrees(total: float, squares: float, ranks: int) -> bool:
    # Σv² · R == (Σv)² only when every rank has the same v (Cauchy-Schwarz).
    return abs(squares * ranks - total * total) <= 1e-6 * max(1.0, total * total)


class DistributedContext:
    """A process group and the collectives a balancing step needs."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, t: Tensor) -> Tensor:
        """Sum over ranks, in place (returns ``t``)."""
        dist.all_reduce(t, group=self.group)
        return t

    def header(
        self,
        num_tasks: int,
        local_counts: Tensor,
        local_losses: Tensor,
        local_present: Tensor,
        failed: bool,
        layout: Sequence[float],
        reached_shared: float,
        device: torch.device,
    ) -> StepHeader:
        """The step's first collective: counts, weighted losses, failure flags, layout checks.

        Every rank reaches it, also one whose inputs were bad (``failed``): then every rank
        raises instead of some waiting forever in a later collective. ``layout`` (numbers that
        describe the gradients this rank will reduce) must agree across ranks.
        """
        T, R = num_tasks, self.world_size
        checks = [*layout, reached_shared]
        buf = torch.zeros(3 * T + R + 2 * len(checks), dtype=torch.float64, device=device)
        if not failed:
            n = local_counts.to(device=device, dtype=torch.float64)
            buf[:T] = n
            buf[T : 2 * T] = n * local_losses.detach().to(device=device, dtype=torch.float64)
            buf[2 * T : 3 * T] = local_present.to(device=device, dtype=torch.float64)
        buf[3 * T + self.rank] = float(failed)
        at = 3 * T + R
        for i, v in enumerate(checks):
            buf[at + 2 * i] = float(v)
            buf[at + 2 * i + 1] = float(v) ** 2
        self.all_reduce(buf)
        host = buf[2 * T :].cpu()
        bad = [r for r in range(R) if host[T + r] > 0]
        N = buf[:T]
        if bad and not failed:
            raise RemoteRankError(
                f"rank(s) {bad} failed in this balancing step (their error is raised there); "
                f"rank {self.rank} stops too instead of waiting for them"
            )
        agree = [
            _agrees(float(host[T + R + 2 * i]), float(host[T + R + 2 * i + 1]), R)
            for i in range(len(checks))
        ]
        if not failed and not all(agree[:-1]):
            raise ValueError(
                "the ranks disagree on the parameters whose gradients they reduce (a task head "
                "is reached on some ranks only, e.g. a task without labels on one rank); pass "
                "parameters=model.parameters() to Balancer so every rank reduces the same list"
            )
        present = N > 0
        safe = torch.where(present, N, torch.ones_like(N))
        losses = torch.where(present, buf[T : 2 * T] / safe, torch.zeros_like(N))
        n_local = local_counts.to(device=device, dtype=torch.float64)
        share = torch.where(present, n_local / safe, torch.zeros_like(N))
        seen = host[:T]
        present_host = present.cpu()
        everywhere = bool(((seen == R) | ~present_host).all())
        return StepHeader(N, losses, present, share, everywhere, agree[-1])

    def broadcast_seed(self, device: torch.device) -> int:
        """One int64 drawn on rank 0 (global RNG), the same on every rank."""
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        buf = seed.to(device)
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        dist.broadcast(buf, src=src, group=self.group)
        return int(buf.cpu()[0])

    def all_gather_columns(self, rows: Tensor, parts: Sequence[int]) -> tuple[Tensor, list[int]]:
        """Every rank's ``rows`` (``[n, F_r]``, F_r split into feature tensors of ``parts``) as
        the union's ``[n, Σ_r F_r]``, feature tensor by feature tensor, rank order within each
        (the layout of the features of the union batch). Returns it and, per feature tensor,
        this rank's column offset in it."""
        R = self.world_size
        sizes = torch.tensor(list(parts), dtype=torch.int64, device=rows.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(R)]
        dist.all_gather(all_sizes, sizes, group=self.group)
        size_rows = [s.cpu().tolist() for s in all_sizes]
        width = max(sum(s) for s in size_rows)
        padded = rows.new_zeros(rows.shape[0], width)
        padded[:, : rows.shape[1]] = rows
        gathered = [torch.empty_like(padded) for _ in range(R)]
        dist.all_gather(gathered, padded, group=self.group)
        blocks: list[Tensor] = []
        offsets: list[int] = []
        at = 0
        for i in range(len(parts)):
            for r in range(R):
                start = sum(size_rows[r][:i])
                if r == self.rank:
                    offsets.append(at)
                blocks.append(gathered[r][:, start : start + size_rows[r][i]])
                at += size_rows[r][i]
        return torch.cat(blocks, dim=1), offsets
