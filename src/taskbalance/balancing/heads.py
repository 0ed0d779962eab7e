"""The head pass: every task's backward from its own loss down to the shared features, once.

In rep mode, in GradNorm's norm measurement and in batched param mode the Balancer needs, for
every task t, the gradient of ``L_t`` w.r.t. the shared features z (a row of the feature
Jacobian). The same backward also yields the gradients of the task's own parameters (its head),
so they are kept here and written later: the heads are traversed once per step, and what
remains is one backward from z through the shared part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["HeadPass", "feature_list", "head_pass", "leaves_above"]


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


def leaves_above(loss: Tensor, feats: Sequence[Tensor]) -> list[Tensor]:
    """Leaves requiring grad that ``loss`` reaches without passing through ``feats``."""
    stop = {id(f.grad_fn) for f in feats if f.grad_fn is not None}
    feature_ids = {id(f) for f in feats}
    seen: set[int] = set()
    leaves: list[Tensor] = []
    stack: list[Any] = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen or id(node) in stop:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if isinstance(variable, Tensor):
            if id(variable) not in feature_ids and variable.requires_grad:
                leaves.append(variable)
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return leaves


@dataclass
class HeadPass:
    """Per task present: its feature gradient (a row of ``rows``) and its head's gradients."""

    features: list[Tensor]
    rows: Tensor  # [n, F]: d L̃_t / d z, the features flattened and concatenated
    params: list[list[Tensor]]
    grads: list[list[Tensor]]

    def feature_cotangents(self) -> list[Tensor]:
        """``rows`` split per feature tensor: ``[n, *f.shape]`` each (a batch of cotangents)."""
        n = self.rows.shape[0]
        parts = self.rows.split([f.numel() for f in self.features], dim=1)
        return [p.reshape(n, *f.shape) for p, f in zip(parts, self.features)]

    def feature_direction(self, coefficients: Tensor) -> list[Tensor]:
        """``Σ_t c_t ∂L_t/∂z`` per feature tensor (one pass over ``rows``)."""
        d = coefficients.to(self.rows.dtype) @ self.rows
        return [
            p.view_as(f) for p, f in zip(d.split([f.numel() for f in self.features]), self.features)
        ]

    def write_heads(self, coefficients: Tensor | None = None) -> None:
        """Add ``c_t ·`` (task t's head gradients) to ``.grad`` (``c = 1`` when None)."""
        for t, (params, grads) in enumerate(zip(self.params, self.grads)):
            for p, g in zip(params, grads):
                if coefficients is not None:
                    g = g * coefficients[t].to(g.dtype)
                if p.grad is None:
                    p.grad = g  # fresh from autograd.grad: nothing else holds it
                else:
                    p.grad.add_(g)


def head_pass(
    losses: Sequence[Tensor],
    seeds: Sequence[Tensor] | None,
    feats: Sequence[Tensor],
    task_names: Sequence[str],
) -> HeadPass:
    """One backward per task from its own loss (times ``seeds[t]``) to the features.

    ``task_names``: the names of the tasks of ``losses`` (for the error when a loss does not
    depend on the features - typically features kept from an earlier forward).
    """
    feats = list(feats)
    first = feats[0]
    offsets = [0]
    for f in feats:
        offsets.append(offsets[-1] + f.numel())
    # Written in place, row by row: one copy of each task's feature gradient, no stacking.
    rows = torch.empty(len(losses), offsets[-1], dtype=first.dtype, device=first.device)
    all_params: list[list[Tensor]] = []
    all_grads: list[list[Tensor]] = []
    for t, loss in enumerate(losses):
        params = leaves_above(loss, feats)
        seed = None if seeds is None else seeds[t]
        grads = torch.autograd.grad(
            loss, [*feats, *params], grad_outputs=seed, retain_graph=True, allow_unused=True
        )
        feature_grads, param_grads = grads[: len(feats)], grads[len(feats) :]
        if all(g is None for g in feature_grads):
            raise ValueError(
                f"the loss of task {task_names[t]!r} does not depend on the features passed to "
                "backward(): pass the shared features of this same forward pass (e.g. "
                "model.features right after model(x)); features kept from an earlier forward "
                "would balance nothing"
            )
        for i, g in enumerate(feature_grads):
            target = rows[t, offsets[i] : offsets[i + 1]]
            if g is None:
                target.zero_()
            else:
                target.copy_(g.reshape(-1))
        kept = [(p, g) for p, g in zip(params, param_grads) if g is not None]
        all_params.append([p for p, _ in kept])
        all_grads.append([g for _, g in kept])
    return HeadPass(feats, rows, all_params, all_grads)
