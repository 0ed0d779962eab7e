"""One balancing step over the ranks of a process group: the union-batch step on every rank.

See :mod:`taskbalance.balancing.distributed` for the union batch and the ranks' shares ``c``.
Every rank takes the same decision from the same reduced numbers:

* loss methods: the method combines the union losses (a leaf, identical on every rank, so its
  own parameters receive identical gradients and its state evolves identically); each rank
  backpropagates ``Σ_t a_t c_t L_t^r`` with ``a = ∂combine/∂L``; the parameters' gradients are
  summed over ranks. GradNorm's norms come from the union gradients of the last shared layer.
* gradient methods, param mode: each rank's rows ``c_t ∇L_t^r`` of J are summed over ranks
  (with the task heads' gradients, in one collective), then every rank aggregates the same J.
  ``memory="gramian"``: each parameter's ``[n, size]`` block is summed over ranks inside the
  streaming pass, so the Gramian is exact and J is never held.
* gradient methods, rep mode: the union's feature Jacobian is the concatenation of the ranks'
  rows, so its Gramian is the sum of the ranks' Gramians (``n²`` numbers reduced); methods that
  need J itself (GradDrop) gather the rows. Each rank backpropagates its own part of the
  direction, then the parameters' gradients are summed over ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from .base import GradientMethod, LossMethod, make_generator
from .distributed import DistributedContext, EmptyStepError
from .heads import feature_list
from .solvers import combine, first_nonfinite_row, gramian
from .step_info import LossInput, StepInfo
from .streaming import (
    gramian_by_parameter,
    reachable_leaves,
)

# The Balancer calls in here with itself: typed Any, since importing it would be a circle.
Balancer = Any

__all__ = ["abort_step", "distributed_backward"]


def _flat_reduce(ctx: DistributedContext, tensors: Sequence[Tensor], like: Tensor) -> list[Tensor]:
    """Sum ``tensors`` over ranks in one collective; returns the summed tensors."""
    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1).to(like.dtype) for t in tensors])
    ctx.all_reduce(flat)
    return [
        p.view_as(t).to(t.dtype) for p, t in zip(flat.split([t.numel() for t in tensors]), tensors)
    ]


def _sync_list(balancer: Balancer, own: Sequence[Tensor]) -> list[nn.Parameter]:
    if balancer.sync_parameters is not None:
        return balancer.sync_parameters
    shared_ids = {id(p) for p in balancer.shared}
    others = [p for p in reachable_leaves(list(own)) if id(p) not in shared_ids and p.requires_grad]
    return [*balancer.shared, *others]  # type: ignore[list-item]


def _counts(balancer: Balancer, counts: object, items: Sequence[Tensor | None]) -> Tensor:
    names = balancer.task_names
    assert names is not None
    T = len(items)
    if counts is None:
        return torch.tensor([0.0 if x is None else 1.0 for x in items], dtype=torch.float64)
    if isinstance(counts, dict):
        unknown = sorted(set(counts) - set(names))
        if unknown:
            raise ValueError(f"counts names unknown task(s) {unknown}; tasks: {list(names)}")
        values = [float(counts.get(n, 0)) for n in names]
    else:
        raw = counts.tolist() if isinstance(counts, Tensor) else list(counts)  # type: ignore[attr-defined,call-overload]
        if len(raw) != T:
            raise ValueError(f"counts must have one entry per task ({T}), got {len(raw)}")
        values = [float(v) for v in raw]
    for n, v, x in zip(names, values, items):
        if not v >= 0 or v == float("inf"):
            raise ValueError(f"the count of task {n!r} must be a finite number >= 0, got {v}")
        if x is None and v != 0:
            raise ValueError(f"task {n!r} has no loss on this rank but a count of {v}; pass 0")
        if x is not None and v == 0:
            raise ValueError(
                f"task {n!r} has a loss but a count of 0; pass the number of samples labelled "
                "for it in this rank's batch, or None as its loss"
            )
    return torch.tensor(values, dtype=torch.float64)


def _save_grads(params: Sequence[nn.Parameter]) -> list[Tensor | None]:
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    return saved


def _restore_reduced(
    ctx: DistributedContext,
    params: Sequence[nn.Parameter],
    saved: Sequence[Tensor | None],
    reduce: bool,
) -> None:
    """Sum this step's gradients of ``params`` over ranks (when ``reduce``), then add back what
    ``.grad`` held before the step (gradient accumulation keeps working)."""
    step = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    if reduce and params:
        step = _flat_reduce(ctx, step, step[0])
    for p, g, old in zip(params, step, saved):
        p.grad = g if old is None else old + g


def abort_step(balancer: Balancer, error: BaseException) -> NoReturn:
    """A rank that failed before :meth:`Balancer.backward` (its forward pass, its losses)
    joins the step's first collective as failed, so the other ranks raise
    :class:`RemoteRankError` instead of waiting; then ``error`` is raised here. In one process
    (no group) ``error`` is raised at once."""
    ctx = balancer._dist
    if ctx is not None:
        T = balancer.method.num_tasks
        device = balancer.shared[0].device if balancer.shared else torch.device("cpu")
        empty = torch.zeros(T, dtype=torch.float64)
        ctx.header(T, empty, empty, empty.bool(), True, [0.0, 0.0], 0.0, device)
    raise error


def distributed_backward(
    balancer: Balancer,
    losses: LossInput,
    features: Tensor | Sequence[Tensor] | None,
    counts: object,
) -> StepInfo:
    ctx = balancer._dist
    assert ctx is not None
    method = balancer.method
    T = method.num_tasks
    device = balancer.shared[0].device
    error: BaseException | None = None
    items: list[Tensor | None] = [None] * T
    stacked = torch.zeros(T, dtype=balancer.shared[0].dtype, device=device)
    local_counts = torch.zeros(T, dtype=torch.float64)
    sync: list[nn.Parameter] = []
    try:
        items, stacked, _, _ = balancer._stack(losses, allow_empty=True)
        local_counts = _counts(balancer, counts, items)
        sync = _sync_list(balancer, [x for x in items if x is not None])
    except Exception as exc:  # every rank must reach the header: raised right after it
        error = exc
    shared_ids = {id(p) for p in balancer.shared}
    reach = reachable_leaves([x for x in items if x is not None]) if error is None else []
    reached_shared = sum(1.0 for p in reach if id(p) in shared_ids)
    agree = [
        float(sum(p.numel() for p in sync)),
        float(sum((i + 1) * p.numel() for i, p in enumerate(sync))),
    ]
    local_present = torch.tensor([x is not None for x in items])
    header = ctx.header(
        T, local_counts, stacked, local_present, error is not None, agree, reached_shared, device
    )
    if error is not None:
        raise error
    names = balancer.task_names
    assert names is not None
    present = header.present
    present_host = present.cpu()
    if not bool(present_host.any()):
        raise EmptyStepError("no task has a loss on any rank in this step; skip the batch instead")
    if method.generator is None and "seed" in method_options(method):
        method.generator = make_generator(ctx.broadcast_seed(device))
    all_present = bool(present_host.all())
    union = header.losses.to(stacked.dtype)
    info = StepInfo(task_names=names, losses=union.detach(), present=present)
    idx = [t for t in range(T) if bool(present_host[t])]
    local_idx = [t for t in idx if items[t] is not None]
    own: list[Tensor] = [items[t] for t in local_idx]  # type: ignore[misc]
    share = header.share.to(stacked.dtype)
    mask = None if all_present else present

    if isinstance(method, LossMethod):
        saved = _save_grads(sync)
        _loss_step(balancer, ctx, method, union, mask, share, own, local_idx, info)
        _restore_reduced(ctx, sync, saved, reduce=True)
    elif isinstance(method, GradientMethod):
        _gradient_step(
            balancer,
            ctx,
            method,
            union,
            present_host,
            idx,
            local_idx,
            own,
            share,
            features,
            sync,
            header.everywhere and header.reach_agrees,
            info,
        )
    else:  # pragma: no cover
        raise TypeError(f"unsupported method kind {method.kind!r}")
    if not info.skipped:
        info.weights = balancer._full_weights(method.last_weights, present, all_present)
    return info


def method_options(method: nn.Module) -> tuple[str, ...]:
    from .registry import method_info

    name = getattr(method, "name", "")
    return method_info(name).options if name else ()


def _loss_step(
    balancer: Balancer,
    ctx: DistributedContext,
    method: LossMethod,
    union: Tensor,
    mask: Tensor | None,
    share: Tensor,
    own: list[Tensor],
    local_idx: list[int],
    info: StepInfo,
) -> None:
    if method.needs_last_layer_grad_norms:
        norms = _union_last_layer_norms(balancer, ctx, union, share, own, local_idx)
        method.observe_grad_norms(norms)
        info.grad_norms = norms
    raw = union.detach().clone().requires_grad_(True)
    total = method.combine_present(raw, mask)
    if total.requires_grad:
        total.backward()  # identical on every rank: the method's parameters agree
    if raw.grad is None or not own:
        return
    coef = raw.grad * share
    local = torch.stack([coef[t].to(x.dtype) * x for t, x in zip(local_idx, own)]).sum()
    local.backward()


def _union_last_layer_norms(
    balancer: Balancer,
    ctx: DistributedContext,
    union: Tensor,
    share: Tensor,
    own: list[Tensor],
    local_idx: list[int],
) -> Tensor:
    """``‖∇_W L_t‖`` of the union losses: the ranks' ``c_t ∇_W L_t^r`` summed, then the norms."""
    W = balancer.last_shared
    T = len(union)
    size = sum(p.numel() for p in W)
    rows = torch.zeros(T, size, dtype=W[0].dtype, device=W[0].device)
    for t, loss in zip(local_idx, own):
        grads = torch.autograd.grad(loss, W, retain_graph=True, allow_unused=True)
        parts = [torch.zeros_like(p) if g is None else g for p, g in zip(W, grads)]
        rows[t] = torch.cat([g.reshape(-1) for g in parts]) * share[t].to(rows.dtype)
    ctx.all_reduce(rows)
    return rows.pow(2).sum(dim=1).sqrt().to(union.dtype)


@dataclass
class _UnionStep:
    """What the three ways of a distributed gradient step share (see :func:`_gradient_step`).

    ``saved_shared``/``saved_others``: the parameters' gradients from before the step; a way
    that restores them itself (reduced over ranks) empties the list.
    """

    balancer: Balancer
    ctx: DistributedContext
    method: GradientMethod
    idx: list[int]
    local_idx: list[int]
    own: list[Tensor]
    coef: list[Tensor]
    pos: list[int]
    losses_arg: Tensor | None
    host_mask: Tensor | None
    info: StepInfo
    others: list[nn.Parameter]
    saved_shared: list[Tensor | None]
    saved_others: list[Tensor | None]
    dtype: torch.dtype
    device: torch.device


def _gradient_step(
    balancer: Balancer,
    ctx: DistributedContext,
    method: GradientMethod,
    union: Tensor,
    present_host: Tensor,
    idx: list[int],
    local_idx: list[int],
    own: list[Tensor],
    share: Tensor,
    features: Tensor | Sequence[Tensor] | None,
    sync: list[nn.Parameter],
    streaming_safe: bool,
    info: StepInfo,
) -> None:
    all_present = bool(present_host.all())
    seeds = balancer._loss_seeds(method, union, idx)  # f'(L) of the union losses, or None
    coef = [
        share[t] * (1.0 if seeds is None else seeds[idx.index(t)].to(share.dtype))
        for t in local_idx
    ]
    shared_ids = {id(p) for p in balancer.shared}
    others = [p for p in sync if id(p) not in shared_ids]
    saved_shared = _save_grads(balancer.shared)
    saved_others = _save_grads(others)
    first = balancer.shared[0]
    step = _UnionStep(
        balancer=balancer,
        ctx=ctx,
        method=method,
        idx=idx,
        local_idx=local_idx,
        own=own,
        coef=coef,
        pos=[idx.index(t) for t in local_idx],  # rows of this rank's tasks among those present
        losses_arg=union.detach()[present_host.to(union.device)] if method.needs_losses else None,
        host_mask=None if all_present else present_host,
        info=info,
        others=others,
        saved_shared=saved_shared,
        saved_others=saved_others,
        dtype=first.dtype,
        device=first.device,
    )
    G: Tensor | None
    if balancer.mode == "param" and balancer.memory == "gramian" and streaming_safe:
        G = _streamed_param_step(step)
    elif balancer.mode == "param":
        G = _param_step(step, features)
    else:
        G = _rep_step(step, features)
    for p, old in zip(balancer.shared, step.saved_shared):
        if old is not None:
            p.grad = old if p.grad is None else old + p.grad
    if G is not None and balancer.track_gradients:
        present = present_host.to(step.device)
        info.grad_norms, info.cosines = balancer._gradient_stats(
            G, step.dtype, step.device, present, all_present
        )


def _streamed_param_step(s: _UnionStep) -> Tensor:
    """Param mode, ``memory="gramian"``: the union Gramian streamed, J never held."""
    b, dtype, device = s.balancer, s.dtype, s.device
    G = _streamed_union_gramian(s.ctx, b, s.own, s.coef, s.pos, len(s.idx))
    _restore_reduced(s.ctx, s.others, s.saved_others, reduce=True)  # heads from the batched pass
    bad = first_nonfinite_row(G)
    if bad is not None:
        b._refuse_nonfinite(s.info.task_names[s.idx[bad]], s.info)
    else:
        w = s.method.solve(G, s.losses_arg, s.host_mask, dtype=dtype, device=device)
        if s.own:
            wl = torch.stack([w[p].to(device=device, dtype=dtype) for p in s.pos])
            b._write_weighted_backward(s.own, None, wl * torch.stack(s.coef).to(dtype))
        _restore_reduced(s.ctx, b.shared, s.saved_shared, reduce=True)
        s.saved_shared = []
    return G


def _param_step(s: _UnionStep, features: Tensor | Sequence[Tensor] | None) -> Tensor | None:
    """Param mode: the ranks' rows of J (and the heads' gradients) summed in one collective."""
    b = s.balancer
    if b.task_backward == "batched" and s.own:
        local = b._batched_param_jacobian(s.own, s.coef, s.local_idx, features)
    else:
        local = b._param_jacobian(s.own, s.coef)
    J = torch.zeros(len(s.idx), b._num_shared, dtype=s.dtype, device=s.device)
    if s.own:
        J[s.pos] = local
    del local
    heads = [torch.zeros_like(p) if p.grad is None else p.grad for p in s.others]
    reduced = _flat_reduce(s.ctx, [J, *heads], J)
    J = reduced[0]
    for p, g, old in zip(s.others, reduced[1:], s.saved_others):
        p.grad = g if old is None else old + g
    G = gramian(J, device="cpu") if s.method.uses_gramian or b.track_gradients else None
    _decide(b, s.method, J, G, s.losses_arg, s.host_mask, s.idx, s.info, b._param_writer())
    return G


def _rep_step(s: _UnionStep, features: Tensor | Sequence[Tensor] | None) -> Tensor | None:
    """Rep mode: the Gramian is the sum of the ranks' Gramians; J-methods gather the rows."""
    b, method = s.balancer, s.method
    feats = feature_list(features)
    rows_local, write = b._rep_jacobian(s.own, s.coef, s.local_idx, feats)
    rows = rows_local.new_zeros(len(s.idx), rows_local.shape[1])
    if s.own:
        rows[s.pos] = rows_local
    G: Tensor | None = None
    if method.uses_gramian or b.track_gradients:
        Gd = gramian(rows, device=rows.device)
        G = s.ctx.all_reduce(Gd.contiguous()).cpu()
    if method.uses_gramian:
        _decide(b, method, rows, G, s.losses_arg, s.host_mask, s.idx, s.info, write)
    else:
        union_rows, offsets = s.ctx.all_gather_columns(rows, [f.numel() for f in feats])
        parts = [f.numel() for f in feats]

        def write_own(d: Tensor) -> None:
            write(torch.cat([d[o : o + k] for o, k in zip(offsets, parts)]))

        _decide(b, method, union_rows, G, s.losses_arg, s.host_mask, s.idx, s.info, write_own)
    _restore_reduced(s.ctx, [*b.shared, *s.others], [*s.saved_shared, *s.saved_others], True)
    s.saved_shared, s.saved_others = [], []
    return G


def _decide(
    balancer: Balancer,
    method: GradientMethod,
    J: Tensor,
    G: Tensor | None,
    losses_arg: Tensor | None,
    host_mask: Tensor | None,
    idx: list[int],
    info: StepInfo,
    write: Callable[[Tensor], None],
) -> None:
    """The same decision on every rank: weights from the reduced Gramian, or ``_aggregate``."""
    names = info.task_names
    bad = first_nonfinite_row(G) if G is not None else balancer._nonfinite_row(J, None)
    if bad is not None:
        balancer._refuse_nonfinite(names[idx[bad]], info)
        return
    if method.uses_gramian:
        assert G is not None
        w = method.solve(G, losses_arg, host_mask, dtype=J.dtype, device=J.device)
        write(combine(w, J))
    else:
        present = None if host_mask is None else host_mask.to(J.device)
        write(method.aggregate_present(J, losses_arg, present))


def _streamed_union_gramian(
    ctx: DistributedContext,
    balancer: Balancer,
    own: list[Tensor],
    coef: list[Tensor],
    pos: list[int],
    n: int,
) -> Tensor:
    """memory='gramian': each shared parameter's block summed over ranks, its Gramian added.

    Every rank holds the same tasks and reaches the same shared parameters here (checked by the
    step's header), so the per-parameter collectives run in the same order on every rank.
    """

    def union_block(block: Tensor) -> Tensor:
        full = block.new_zeros(n, block.shape[1])
        full[pos] = block
        ctx.all_reduce(full)
        return full

    G = gramian_by_parameter(own, coef, balancer.shared, num_rows=n, block_rows=union_block)
    return G.cpu()
