"""The Gramian of the per-task gradients without holding them all: ``memory="gramian"``.

One batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) carries the
``T`` one-hot cotangents through the graph at once, so each shared parameter receives its ``T``
per-task gradients together, as a ``[T, *shape]`` block. A hook on the parameter adds that
block's Gramian to ``G`` (float64) and hands autograd back a zero-stride placeholder, so the
block is freed at once: the pass never holds more than ``T x`` one parameter of gradients (plus
the batched activation gradients of the backward itself). Task-specific parameters receive the
sum over tasks of their block (their own task's gradient), as in the full-J path.

Inside a batched backward, hooks see per-task views; the block is recovered with PyTorch's
batching primitives (``torch._remove_batch_dim`` at the current vmap level). Those are private
APIs; :func:`streaming_supported` says whether this PyTorch has them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .solvers import _chunked_gramian

__all__ = [
    "batched_task_gradients",
    "gramian_by_parameter",
    "loss_cotangents",
    "reachable_leaves",
    "streaming_supported",
]


def streaming_supported() -> bool:
    """Whether this PyTorch exposes the batching primitives the streaming pass relies on."""
    return all(
        hasattr(mod, name)
        for mod, name in (
            (torch, "_remove_batch_dim"),
            (torch._C, "_vmapmode_increment_nesting"),
            (torch._C, "_vmapmode_decrement_nesting"),
        )
    )


def reachable_leaves(roots: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that the graphs of ``roots`` reach (each once, in order)."""
    seen_nodes: set[int] = set()
    seen_leaves: set[int] = set()
    leaves: list[Tensor] = []
    stack: list[Any] = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if isinstance(variable, Tensor) and id(variable) not in seen_leaves:
            seen_leaves.add(id(variable))
            leaves.append(variable)
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return leaves


def _unbatched(g: Tensor, T: int) -> Tensor:
    """The ``[T, *shape]`` block behind the per-task view ``g`` seen inside a batched backward."""
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return torch._remove_batch_dim(g, level - 1, T, 0)


def _placeholder(g: Tensor) -> Tensor:
    # What autograd keeps instead of the block: one zero, expanded (no memory).
    return torch.zeros((), dtype=g.dtype, device=g.device).expand(g.shape)


def loss_cotangents(losses: Sequence[Tensor], seeds: Sequence[Tensor] | None) -> list[Tensor]:
    """Batched cotangents of T scalar losses: task t's batch entry is ``seeds[t]`` on loss t."""
    T = len(losses)
    first = losses[0]
    eye = torch.eye(T, dtype=first.dtype, device=first.device)
    if seeds is None:
        return [eye[:, t] for t in range(T)]
    return [eye[:, t] * seeds[t].to(first.dtype) for t in range(T)]


def batched_task_gradients(
    roots: Sequence[Tensor],
    cotangents: Sequence[Tensor],
    shared: Sequence[nn.Parameter],
    on_block: Callable[[int, Tensor], None],
    *,
    retain_graph: bool = True,
) -> None:
    """One batched backward from ``roots`` (cotangents ``[T, *root.shape]``, one per task):
    ``on_block(i, block)`` receives the ``[T, n_i]`` per-task gradients of ``shared[i]`` as
    they arrive; autograd keeps none of them.

    Every other leaf the roots reach gets the sum of its per-task gradients added to ``.grad``
    (a task-specific parameter: its own task's gradient, as with one backward per task).
    """
    T = cotangents[0].shape[0]
    shared_ids = {id(p) for p in shared}
    others = [p for p in reachable_leaves(roots) if id(p) not in shared_ids and p.requires_grad]

    def shared_hook(i: int) -> Callable[[Tensor], Tensor]:
        def hook(g: Tensor) -> Tensor:
            on_block(i, _unbatched(g, T).reshape(T, -1))
            return _placeholder(g)

        return hook

    def other_hook(p: Tensor) -> Callable[[Tensor], Tensor]:
        def hook(g: Tensor) -> Tensor:
            total = _unbatched(g, T).sum(dim=0)
            p.grad = total if p.grad is None else p.grad + total
            return _placeholder(g)

        return hook

    handles = [p.register_hook(shared_hook(i)) for i, p in enumerate(shared)]
    handles += [p.register_hook(other_hook(p)) for p in others]
    try:
        torch.autograd.grad(
            list(roots),
            [*shared, *others],
            grad_outputs=list(cotangents),
            retain_graph=retain_graph,
            allow_unused=True,
            is_grads_batched=True,
        )
    finally:
        for h in handles:
            h.remove()


def gramian_by_parameter(
    losses: Sequence[Tensor],
    seeds: Sequence[Tensor] | None,
    shared: Sequence[nn.Parameter],
    *,
    num_rows: int | None = None,
    block_rows: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``G = J Jᵀ`` (float64, on the parameters' device, symmetric like :func:`gramian`'s) of
    ``d losses[t] / d shared``, from :func:`batched_task_gradients` (each block's Gramian added,
    the block freed). The graph is retained for the caller's next backward.

    ``block_rows`` maps each parameter's ``[len(losses), size]`` block to the ``[num_rows,
    size]`` block whose Gramian is added (the distributed step places a rank's rows among the
    union's and sums them over ranks); default: the block itself.
    """
    n = len(losses) if num_rows is None else num_rows
    G = torch.zeros(n, n, dtype=torch.float64, device=shared[0].device)

    def add(_: int, block: Tensor) -> None:
        if block_rows is not None:
            block = block_rows(block)
        G.add_(_chunked_gramian(block, exact=True))

    batched_task_gradients(losses, loss_cotangents(losses, seeds), shared, add)
    # Blocked products are symmetric only up to rounding; GradientMethod.solve expects exactly.
    return 0.5 * (G + G.T)
