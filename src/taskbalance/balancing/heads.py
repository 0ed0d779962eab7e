"""The head pass: every task's backward from its own loss down to the shared features, once.

In rep mode, in GradNorm's norm measurement and in batched param mode the Balancer needs, for
every task t, the gradient of ``L_t`` w.r.t. the shared features z (a row of the feature
Jacobian). The same backward also yields the gradients of the task's own parameters (its head),
so they are kept here and written later: the heads are traversed once per step, and what
remains is one backward from z through the shared part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .rows import feature_blocks

__all__ = [
    "HeadPass",
    "feature_list",
    "head_pass",
    "leaves_above",
    "task_inputs",
    "tied_leaves",
    "view_pass",
]


def feature_list(features: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    """The shared features as a list, validated (one clear error naming the fix)."""
    if features is None:
        raise ValueError(
            "rep mode needs the shared features: call backward(losses, features=model.features)"
        )
    feats = [features] if isinstance(features, Tensor) else list(features)
    if not feats or any(not isinstance(f, Tensor) or not f.requires_grad for f in feats):
        raise ValueError(
            "features must be the tensor(s) of shared features the task heads consumed, "
            "attached to the autograd graph (requires_grad)"
        )
    return feats


def task_inputs(
    features: Mapping[str, Tensor | Sequence[Tensor]], task_names: Sequence[str]
) -> list[list[Tensor]]:
    """Per task (in ``task_names`` order), the head inputs of a per-task ``features`` mapping,
    validated: every task's are views of the same shared tensors, alike in shape and layout."""
    missing = [n for n in task_names if n not in features]
    extra = [n for n in features if n not in task_names]
    if missing or extra:
        raise ValueError(
            f"per-task features must have one entry per task {list(task_names)}; missing "
            f"{missing}, unexpected {extra}"
        )
    out = [feature_list(features[n]) for n in task_names]
    ref = out[0]
    for name, inputs in zip(task_names, out):
        if len(inputs) != len(ref) or not all(_same_alias(x, r) for x, r in zip(inputs, ref)):
            raise ValueError(
                f"the features of task {name!r} are not a view of the same shared features as "
                f"task {task_names[0]!r}'s: per-task features must be what each head consumed, "
                "made for that head alone as a view of the shared features (e.g. "
                "{task: z.view_as(z)}), or pass the shared features themselves"
            )
    owner: dict[int, str] = {}
    for name, inputs in zip(task_names, out):
        for x in inputs:
            other = owner.setdefault(id(x), name)
            if other != name:  # one view read by two heads: its gradient would be a sum
                raise ValueError(
                    f"tasks {other!r} and {name!r} were given the same tensor: per-task "
                    "features must be a view made for each head alone (e.g. "
                    "{task: z.view_as(z)}), or pass the shared features themselves"
                )
    return out


def _parent(x: Tensor) -> Any:
    fn = x.grad_fn
    return None if fn is None or not fn.next_functions else fn.next_functions[0]


def _same_alias(x: Tensor, ref: Tensor) -> bool:
    """Both views of one tensor with one layout: backpropagating through either is the same."""
    return (
        x._is_view()
        and ref._is_view()
        and _parent(x) is not None
        and _parent(x) == _parent(ref)
        and x.shape == ref.shape
        and x.stride() == ref.stride()
        and x.data_ptr() == ref.data_ptr()
    )


def leaves_above(loss: Tensor | Sequence[Tensor], feats: Sequence[Tensor]) -> list[Tensor]:
    """Leaves requiring grad that ``loss`` (or any of several losses) reaches without passing
    through ``feats``."""
    return _walk(loss, feats)[0]


def _walk(loss: Tensor | Sequence[Tensor], feats: Sequence[Tensor]) -> tuple[list[Tensor], bool]:
    """:func:`leaves_above`, and whether the walk reached any of ``feats``."""
    stop = {id(f.grad_fn) for f in feats if f.grad_fn is not None}
    feature_ids = {id(f) for f in feats}
    seen: set[int] = set()
    leaves: list[Tensor] = []
    losses = [loss] if isinstance(loss, Tensor) else list(loss)
    stack: list[Any] = [x.grad_fn for x in losses if x.grad_fn is not None]
    reached = False
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        if id(node) in stop:
            reached = True
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if isinstance(variable, Tensor):
            if id(variable) in feature_ids:
                reached = True
            elif variable.requires_grad:
                leaves.append(variable)
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return leaves, reached


def tied_leaves(
    losses: Sequence[Tensor], stop: Sequence[Tensor], features: Sequence[Tensor]
) -> list[Tensor]:
    """Leaves that ``losses`` reach without passing through ``stop`` (the features, or every
    head's view of them) and that also lie below the ``features``: a weight tied between a head
    and the shared part. A head pass cannot split such a leaf's gradient (the backward from a
    task's loss to it also runs through the features), so a step that adds a backward from the
    features would count that part twice. A loss that does not reach ``stop`` is left to the
    head pass (its error names the cause: features of an earlier forward)."""
    below = {id(x) for x in leaves_above(list(features), [])}
    tied: list[Tensor] = []
    for loss in losses:
        leaves, reached = _walk(loss, stop)
        if reached:
            tied += [p for p in leaves if id(p) in below and all(p is not q for q in tied)]
    return tied


@dataclass
class HeadPass:
    """Per task present: its feature gradient (a row of ``rows``) and its head's gradients."""

    features: list[Tensor]
    rows: Tensor  # [n, F]: d L̃_t / d z, the features flattened and concatenated
    params: list[Tensor]
    grads: list[Tensor]
    #: Per task present, the indices into ``params`` / ``grads`` of its head's parameters.
    owners: list[list[int]]

    @property
    def numels(self) -> list[int]:
        """Entries of each feature tensor (its columns of ``rows``)."""
        return [f.numel() for f in self.features]

    def feature_cotangents(self) -> list[Tensor]:
        """``rows`` split per feature tensor: ``[n, *f.shape]`` each (a batch of cotangents;
        views of ``rows``, no copy)."""
        n = self.rows.shape[0]
        blocks = self.rows.split(self.numels, dim=1)
        return [b.view(n, *f.shape) for b, f in zip(blocks, self.features)]

    def feature_direction(self, coefficients: Tensor) -> list[Tensor]:
        """``Σ_t c_t ∂L_t/∂z`` per feature tensor (one pass over ``rows``)."""
        rows = self.rows
        d = coefficients.to(device=rows.device, dtype=rows.dtype) @ rows
        return [p.view_as(f) for p, f in zip(d.split(self.numels), self.features)]

    def write_heads(self, coefficients: Tensor | None = None) -> None:
        """Add ``c_t ·`` (task t's head gradients) to ``.grad`` (``c = 1`` when None)."""
        for t, owned in enumerate(self.owners):
            for k in owned:
                p, g = self.params[k], self.grads[k]
                if coefficients is not None:
                    g = g * coefficients[t].to(g.dtype)
                if p.grad is None:
                    p.grad = g  # fresh from autograd.grad: nothing else holds it
                else:
                    p.grad.add_(g)


def _no_feature_error(task: str) -> ValueError:
    return ValueError(
        f"the loss of task {task!r} does not depend on the features passed to "
        "backward(): pass the shared features of this same forward pass (e.g. "
        "model.features right after model(x)); features kept from an earlier forward "
        "would balance nothing"
    )


def head_pass(
    losses: Sequence[Tensor],
    seeds: Sequence[Tensor] | None,
    feats: Sequence[Tensor],
    task_names: Sequence[str],
    J: Tensor,
    inputs: Sequence[Sequence[Tensor]] | None = None,
) -> HeadPass:
    """One backward per task from its own loss (times ``seeds[t]``) to the features.

    ``task_names``: the names of the tasks of ``losses`` (for the error when a loss does not
    depend on the features - typically features kept from an earlier forward). ``J``: the
    ``[n, F]`` matrix the rows are written into (:class:`~.rows.RowBuffer`). ``inputs``: per
    task, its own view of the features (see :func:`view_pass`), where the backward stops.
    """
    feats = list(feats)
    blocks = feature_blocks(J, feats)
    params: list[Tensor] = []
    grads: list[Tensor] = []
    owners: list[list[int]] = []
    for t, loss in enumerate(losses):
        stop = feats if inputs is None else list(inputs[t])
        own_params = leaves_above(loss, stop)
        seed = None if seeds is None else seeds[t]
        # The last task's pass frees the heads' graph (the shared part, below the features,
        # is not traversed and stays for the backward from the features).
        last = t == len(losses) - 1
        out = torch.autograd.grad(
            loss, [*stop, *own_params], grad_outputs=seed, retain_graph=not last, allow_unused=True
        )
        feature_grads, param_grads = out[: len(stop)], out[len(stop) :]
        if all(g is None for g in feature_grads):
            raise _no_feature_error(task_names[t])
        for block, g in zip(blocks[t], feature_grads):  # copied while in cache, then freed
            block.zero_() if g is None else block.copy_(g)
        owned = []
        for p, g in zip(own_params, param_grads):
            if g is not None:
                owned.append(len(params))
                params.append(p)
                grads.append(g)
        owners.append(owned)
    return HeadPass(feats, J, params, grads, owners)


def view_pass(
    losses: Sequence[Tensor],
    seeds: Sequence[Tensor] | None,
    inputs: Sequence[Sequence[Tensor]],
    shared: Sequence[Tensor],
    task_names: Sequence[str],
    J: Tensor,
    split_heads: bool = False,
) -> HeadPass | None:
    """Every task's feature gradient and head gradients from ONE backward.

    ``inputs[t]``: the tensors task t's head consumed, aliases of the ``shared`` features made
    for task t alone (e.g. ``z.view_as(z)``), so the gradient of ``Σ_s seed_s L_s`` at
    ``inputs[t]`` is task t's own. Each head is traversed once, in a single autograd call. A
    hook on each input copies its gradient into row t of ``J`` (``[n, F]``) the moment autograd
    produces it, so the T gradients are never held as T separate tensors.

    ``split_heads``: the head gradients will be scaled per task (:meth:`HeadPass.write_heads`
    with coefficients), so each head parameter must belong to one task; returns None when one
    is reached by two tasks' losses (the caller then takes a backward per task).
    """
    flat = [x for per_task in inputs for x in per_task]
    if split_heads:
        per_task = [leaves_above(loss, flat) for loss in losses]
        params = [p for ps in per_task for p in ps]
        if len({id(p) for p in params}) != len(params):
            return None
        position = {id(p): i for i, p in enumerate(params)}
    else:
        params = leaves_above(list(losses), flat)
    blocks = feature_blocks(J, shared)
    written = [[False] * len(shared) for _ in losses]

    def into_row(t: int, i: int):  # noqa: ANN202 - a tensor hook
        def hook(grad: Tensor) -> Tensor:
            written[t][i] = True
            return blocks[t][i].copy_(grad)  # autograd passes on (and returns) the row's block

        return hook

    handles = [
        x.register_hook(into_row(t, i)) for t, xs in enumerate(inputs) for i, x in enumerate(xs)
    ]
    try:
        grads = torch.autograd.grad(
            list(losses),
            [*flat, *params],
            grad_outputs=None if seeds is None else list(seeds),
            # Frees the heads' graph as it goes (their memory is reused within the pass); the
            # shared part below the inputs is not traversed and stays for the next backward.
            retain_graph=False,
            allow_unused=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    for t, row in enumerate(written):
        if not any(row):
            raise _no_feature_error(task_names[t])
        for i, done in enumerate(row):
            if not done:  # task t's loss does not reach this feature tensor: a zero block
                blocks[t][i].zero_()
    head_grads = grads[len(flat) :]
    kept = [i for i, g in enumerate(head_grads) if g is not None]
    index = {i: j for j, i in enumerate(kept)}
    if split_heads:
        owners = [
            [index[position[id(p)]] for p in ps if position[id(p)] in index] for ps in per_task
        ]
    else:  # written with coefficient 1: no need to know whose each one is
        owners = [list(range(len(kept)))] + [[] for _ in losses[1:]]
    return HeadPass(
        list(shared),
        J,
        [params[i] for i in kept],
        [head_grads[i] for i in kept],  # type: ignore[misc]
        owners,
    )
