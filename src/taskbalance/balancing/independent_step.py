"""One balancing step from independent samples: the double-sampling rule of MoDo and SDMGrad.

A method with ``independent_batches == 3`` (``sampling="independent"``) takes the losses of
three disjoint parts of the batch (:meth:`Balancer.backward_independent`; the Trainer splits
each batch). Each part's per-task gradients ``J_k`` are an independent sample when the batch
is i.i.d.; the weights are solved from the cross-Gramian ``J₁ J₂ᵀ`` (unbiased for ``J Jᵀ``)
and the shared parameters receive ``Σ_t w_t J₃[t]``
(:meth:`~taskbalance.balancing.base.GradientMethod.aggregate_independent`, same numbers).

Cost: three forward passes over a third of the batch each, ``3 T`` backward passes (param
mode) and the three ``[T, P]`` matrices held together. Every task-specific parameter (a head)
receives the mean of its task's gradients over the three parts (the whole batch's gradient
for equal parts of a mean-reduced loss). Param mode, one process only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import GradientMethod, Method, independent_gramians
from .solvers import combine, first_nonfinite_row, gramian
from .step_info import LossInput, StepInfo

# The Balancer calls in here with itself: typed Any, since importing it would be a circle.
Balancer = Any

__all__ = [
    "check_independent_setup",
    "independent_backward",
    "independent_setup_conflict",
    "single_sampling_error",
]


def single_sampling_error(
    name: str | Sequence[str], problem: str, *, command: str | None = None
) -> ValueError:
    """The one refusal of double sampling for method ``name`` (or several methods): ``problem``
    says what cannot take three independent sub-batches a step; the fix is
    ``sampling='single'``, named in Python and, for a run of the command line or a config
    (``command``: ``"train"``), a method comparison (``"compare"``) or a partial-label workflow
    comparison (``"compare --labels"``), as the option there too."""
    names = [name] if isinstance(name, str) else list(name)
    fix = " and ".join(f"taskbalance.create({n!r}, T, sampling='single')" for n in names)
    if command == "train":
        fix = (
            "--option sampling=single on the taskbalance train command line, method_options: "
            f"{{sampling: single}} in a config file, or {fix} in Python"
        )
    elif command in ("compare", "compare --labels"):
        flags = " ".join(f"--option {n}.sampling=single" for n in names)
        python = (
            "compare_workflows(..., method_options={'sampling': 'single'})"
            if command == "compare --labels"
            else "CompareSettings(method_options={"
            + ", ".join(f"{n!r}: {{'sampling': 'single'}}" for n in names)
            + "})"
        )
        fix = f"{flags} on the taskbalance {command} command line, or {python} in Python"
    elif command is not None:
        raise ValueError(f"unknown command {command!r}: 'train', 'compare' or 'compare --labels'")
    which = ", ".join(repr(n) for n in names)
    subject = f"method {which} with" if len(names) == 1 else f"methods {which}:"
    return ValueError(
        f"{subject} sampling='independent' (three independent sub-batches a step) {problem}; "
        f"use sampling='single' ({fix})"
    )


def independent_setup_conflict(
    method: Method, mode: str, memory: str, distributed: bool
) -> str | None:
    """What in a Balancer setting the independent-sample step cannot run in (``None``: it can,
    or the method samples once)."""
    if getattr(method, "independent_batches", 1) == 1:
        return None
    return (
        "rep mode (each part has its own features)"
        if mode == "rep"
        else "memory='gramian' (the cross-Gramian needs two parts' J at once)"
        if memory == "gramian"
        else "a distributed step"
        if distributed
        else None
    )


def check_independent_setup(method: Method, mode: str, memory: str, distributed: bool) -> None:
    """Refuse, at construction, a Balancer setting the independent-sample step cannot run in."""
    where = independent_setup_conflict(method, mode, memory, distributed)
    if where is not None:
        raise single_sampling_error(method.name, f"is not supported in {where}")
    if getattr(method, "independent_batches", 1) == 1:
        return
    if type(method).transform_losses is not Method.transform_losses:  # pragma: no cover
        raise ValueError(f"method {method.name!r}: independent sampling of transformed losses")


def _check_parts(balancer: Balancer, parts: Sequence[LossInput]) -> list[Any]:
    k = balancer.method.independent_batches
    if isinstance(parts, (Tensor, Mapping)) or not isinstance(parts, Sequence) or len(parts) != k:
        got = len(parts) if isinstance(parts, Sequence) else type(parts).__name__
        raise ValueError(
            f"backward_independent takes the losses of {k} disjoint parts of the batch "
            f"(a list of {k} loss dicts), got {got}"
        )
    stacks = [balancer._stack(part) for part in parts]
    flags = [[x is not None for x in items] for items, *_ in stacks]
    differ = [n for t, n in enumerate(balancer.task_names) if len({f[t] for f in flags}) > 1]
    if differ:
        raise single_sampling_error(
            balancer.method.name,
            f"needs every part to label the same tasks, but task(s) {differ} have a loss in "
            "some parts of the batch and not in others (sparsely labelled data)",
        )
    return stacks


def independent_backward(balancer: Balancer, parts: Sequence[LossInput]) -> StepInfo:
    """The step of :meth:`Balancer.backward_independent` (see the module docstring)."""
    method: GradientMethod = balancer.method
    k = method.independent_batches
    balancer._select_shared()
    stacks = _check_parts(balancer, parts)
    items, _, present, all_present = stacks[0]
    mean_losses = torch.stack([s[1].detach() for s in stacks]).mean(dim=0)
    info = StepInfo(task_names=balancer.task_names, losses=mean_losses, present=present)
    idx = [t for t, x in enumerate(items) if x is not None]
    if not balancer.shared:  # heads only: each head gets its task's mean gradient
        total = torch.stack([s[0][t] for s in stacks for t in idx]).sum() / k
        total.backward()
        info.weights = present.to(mean_losses.dtype)
        return info
    n = len(idx)
    first = balancer.shared[0]
    J = torch.zeros(k * n, balancer._num_shared, dtype=first.dtype, device=first.device)
    for j, (part_items, *_) in enumerate(stacks):
        own = [part_items[t] for t in idx]
        # seed 1/k: the heads accumulate the mean over the parts; J is rescaled below
        seeds = [own[0].new_tensor(1.0 / k) for _ in own]
        if balancer.task_backward == "batched":
            J[j * n : (j + 1) * n] = balancer._batched_param_jacobian(own, seeds, idx, None)
        else:
            balancer._param_jacobian(own, seeds, out=J[j * n : (j + 1) * n])
    J.mul_(k)
    G = gramian(J, device="cpu")
    bad = first_nonfinite_row(G)
    if bad is not None:
        balancer._refuse_nonfinite(balancer.task_names[idx[bad % n]], info)
    else:
        cross, _ = independent_gramians(G, n)
        host_mask = None if all_present else torch.tensor([x is not None for x in items])
        losses_arg = mean_losses[present].to(J.dtype) if method.needs_losses else None
        w = method.solve(cross, losses_arg, host_mask, dtype=J.dtype, device=J.device)
        balancer._param_writer()(combine(w, J[2 * n :]))
        info.weights = balancer._full_weights(method.last_weights, present, all_present)
    if balancer.track_gradients and bad is None:
        _, G_mean = independent_gramians(G, n)
        info.grad_norms, info.cosines = balancer._gradient_stats(
            G_mean, J.dtype, J.device, present, all_present
        )
    return info
