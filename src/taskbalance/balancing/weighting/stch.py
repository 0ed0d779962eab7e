"""Smooth Tchebycheff scalarisation (Lin et al., ICML 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from taskbalance.validation import is_int

from ..base import LossMethod, check_positive, check_task_weights, follow, present_mask
from ..registry import register

__all__ = ["SmoothTchebycheff"]


@register(
    "stch",
    paper="Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, "
    "ICML 2024 (arXiv:2402.19078)",
)
class SmoothTchebycheff(LossMethod):
    """Smooth Tchebycheff: ``μ log Σ_t exp(λ_t f_t / μ)``, a smooth maximum of the task losses.

    Lin et al. 2024 (https://arxiv.org/abs/2402.19078): the Tchebycheff scalarisation
    ``max_t λ_t (f_t − z_t)`` smoothed with temperature ``μ`` (its gradient is a softmax-weighted
    sum of the task gradients, so the worst task gets the most weight; ``μ → 0`` recovers the
    max). For multi-task learning the authors' code uses log-normalised losses
    ``f_t = log(L_t / N_t + ε)`` against a nadir point ``N`` (the mean losses of one warm-up
    epoch) and multiplies by the number of tasks ``T``:

    * epochs ``0 .. warmup_epochs − 1``: the total is ``Σ_t log(L_t + ε)``;
    * epoch ``warmup_epochs``: the same, while the step losses are averaged per task into ``N``;
    * afterwards: ``T · μ log Σ_t exp(λ_t log(L_t / N_t + ε) / μ)``.

    Epochs are counted by :meth:`epoch_end` (the Trainer calls it); a task without any loss in
    the nadir epoch keeps collecting in the following epochs, and the smooth maximum starts once
    every task has its ``N_t``. ``last_weights`` are the effective loss weights ``∂total/∂L_t``.
    In a step where some tasks are absent the sum and ``T`` are over the tasks present. The
    state (epoch count, nadir sums) travels in ``state_dict``.

    Losses must be non-negative (a negative loss raises ``ValueError`` naming the task).

    Args:
        mu: smoothing temperature ``μ > 0`` (authors' default in LibMTL: 1.0).
        warmup_epochs: epochs of the plain log-loss sum before the nadir epoch (LibMTL default 4;
            0 collects the nadir in the first epoch).
        pref_weights: preferences ``λ_t > 0``, one per task (default all 1, as the authors' code).
        eps: ``ε`` inside the logarithm (authors' code: 1e-20).
    """

    loss_sign = "non-negative"  # the losses go through log(L + eps)

    nadir_sum: Tensor
    nadir_count: Tensor

    def __init__(
        self,
        num_tasks: int,
        mu: float = 1.0,
        warmup_epochs: int = 4,
        pref_weights: Sequence[float] | Tensor | None = None,
        eps: float = 1e-20,
    ) -> None:
        super().__init__(num_tasks)
        self.mu = check_positive("mu", mu)
        if not is_int(warmup_epochs):
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.eps = check_positive("eps", eps)
        self.pref_weights: Tensor | None = None
        if pref_weights is not None:
            lam = check_task_weights("pref_weights", pref_weights, num_tasks)
            if not bool((lam > 0).all()):
                raise ValueError(f"pref_weights must all be > 0, got {lam.tolist()}")
            self.pref_weights = lam
        self.epochs_done = 0
        # Per-task sums and counts of the losses of the nadir epoch(s); nadir_count < 0 marks a
        # task whose nadir is fixed (then nadir_sum holds N_t).
        self.register_buffer("nadir_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(num_tasks, dtype=torch.float64))
        self._ready = False  # every task has its nadir (mirrors nadir_count; no device sync)

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, mu={self.mu}, warmup_epochs={self.warmup_epochs}, "
            f"eps={self.eps}"
        )

    def reset(self) -> None:
        super().reset()
        self.epochs_done = 0
        self.nadir_sum.zero_()
        self.nadir_count.zero_()
        self._ready = False

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(super().get_extra_state())
        state["epochs_done"] = self.epochs_done
        state["ready"] = self._ready
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.epochs_done = int(state.get("epochs_done", 0))
        self._ready = bool(state.get("ready", False))

    @property
    def nadir(self) -> Tensor | None:
        """The nadir losses ``N`` (float64), or None before every task has one."""
        return self.nadir_sum.clone() if self._ready else None

    def epoch_end(self, mean_losses: Tensor, present: Tensor | None = None) -> None:
        """Count the epoch; after the nadir epoch, fix ``N_t`` of each task that had a loss."""
        del mean_losses, present  # the nadir is the mean of the step losses, collected in combine
        if self.epochs_done >= self.warmup_epochs and not self._ready:
            done = self.nadir_count > 0
            mean = self.nadir_sum / self.nadir_count.clamp_min(1)
            self.nadir_sum.copy_(torch.where(done, mean, self.nadir_sum))
            self.nadir_count.copy_(torch.where(done, -1.0, self.nadir_count))
            self._ready = bool((self.nadir_count < 0).all())
        self.epochs_done += 1

    def _combine(self, losses: Tensor, present: Tensor | None) -> Tensor:
        L = losses.detach()
        if present is None:  # the usual step: no masking work
            p = None
            safe = losses
        else:
            p = present_mask(losses, present)
            safe = torch.where(p, losses, 1.0)
        if not self._ready:
            if self.epochs_done >= self.warmup_epochs:
                self._collect(L, p)
            w = 1.0 / (L + self.eps)
            logs = (safe + self.eps).log()
            if p is None:
                self.last_weights = w
                return logs.sum()
            self.last_weights = torch.where(p, w, 0.0)
            return torch.where(p, logs, 0.0).sum()
        nadir = self.nadir_sum.to(device=losses.device, dtype=losses.dtype)
        f = (safe / nadir + self.eps).log()
        if self.pref_weights is not None:
            lam = self.pref_weights.to(device=losses.device, dtype=losses.dtype)
            f = lam * f
        z = f / self.mu
        if p is None:
            n: Tensor | float = float(self.num_tasks)
        else:
            z = torch.where(p, z, -torch.inf)
            n = p.sum().to(losses.dtype)
        total = n * self.mu * torch.logsumexp(z, 0)
        # ∂total/∂L_t = n λ_t softmax_t / (L_t + ε N_t)
        w = n * torch.softmax(z.detach(), 0) / (L + self.eps * nadir)
        if self.pref_weights is not None:
            w = w * lam
        self.last_weights = w if p is None else torch.where(p, w, 0.0)
        return total

    def _collect(self, L: Tensor, p: Tensor | None) -> None:
        """Add this step's losses to the nadir sums of the tasks present still collecting."""
        self.nadir_sum = follow(self.nadir_sum, L)
        self.nadir_count = follow(self.nadir_count, L)
        collect = self.nadir_count >= 0
        if p is not None:
            collect = collect & p
        self.nadir_sum.add_(torch.where(collect, L.to(self.nadir_sum.dtype), 0.0))
        self.nadir_count.add_(collect.to(self.nadir_count.dtype))

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        raise NotImplementedError("stch is not a sum of per-task terms; use combine()")
