"""FAMO: fast adaptive multitask optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import LossMethod, check_losses, check_positive
from ..registry import register

__all__ = ["FAMO"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@register(
    "famo",
    paper="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023 (arXiv:2306.03792)",
)
class FAMO(LossMethod):
    """FAMO: ``Σ_t z_t log(L_t + ε) / c`` with ``z = softmax(ξ)``, ``c = Σ_t z_t / (L_t + ε)``.

    Liu et al. 2023 (https://arxiv.org/abs/2306.03792). The gradient of the combined loss is
    ``Σ_t w_t ∇L_t`` with effective weights ``w_t = z_t / ((L_t + ε) c)`` (they sum to 1;
    ``c`` is a constant of the step, no gradient flows through it); this decreases every task's
    log-loss at an equal rate to first order. The logits ξ (initially 0) are not trained by the
    network's optimizer: after a step, with ``δ_t = log(L_t^old + ε) − log(L_t^new + ε)`` (how
    much each task's loss fell), ξ takes one Adam step (learning rate γ, L2 weight decay) on the
    gradient ``∂(zᵀδ)/∂ξ = z ⊙ (δ − zᵀδ)``, moving weight to the tasks that improved least.

    Where the new losses come from:

    * ``update_from_next_step=True`` (default): the losses seen at the next call of
      :meth:`combine` (the next batch, after the optimizer step) serve as the "new" losses of the
      previous step, and ξ is updated at the start of that call. No extra forward pass; works in
      any training loop (the cheap variant the paper allows).
    * ``update_from_next_step=False``: as the paper's code, the trainer (or user) calls
      ``method.update(losses_after_step)`` after ``optimizer.step()`` with the losses of the same
      batch recomputed by the updated model. Without such calls ξ never changes and FAMO reduces
      to the fixed weights above.

    Losses must be non-negative (they are clamped at 0 inside the logarithm).

    Args:
        lr: learning rate γ of the logits' Adam step (paper: 0.025).
        weight_decay: L2 weight decay of the logits (paper: 0.001).
        eps: ε added inside the logarithm (paper's code: 1e-8).
        update_from_next_step: see above.
    """

    logits: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor
    prev_losses: Tensor
    prev_present: Tensor

    def __init__(
        self,
        num_tasks: int,
        lr: float = 0.025,
        weight_decay: float = 0.001,
        eps: float = 1e-8,
        update_from_next_step: bool = True,
    ) -> None:
        super().__init__(num_tasks)
        self.lr = check_positive("lr", lr)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.eps = check_positive("eps", eps)
        if not isinstance(update_from_next_step, bool):
            raise ValueError(
                f"update_from_next_step must be True or False, got {update_from_next_step!r}"
            )
        self.update_from_next_step = update_from_next_step
        T = num_tasks
        self.register_buffer("logits", torch.zeros(T))
        self.register_buffer("exp_avg", torch.zeros(T))
        self.register_buffer("exp_avg_sq", torch.zeros(T))
        self.register_buffer("adam_steps", torch.zeros(()))
        self.register_buffer("prev_losses", torch.zeros(T))
        # All False: no previous step to learn from.
        self.register_buffer("prev_present", torch.zeros(T, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, lr={self.lr}, weight_decay={self.weight_decay}, "
            f"update_from_next_step={self.update_from_next_step}"
        )

    def reset(self) -> None:
        super().reset()
        for buf in (self.logits, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.prev_losses):
            buf.zero_()
        self.prev_present.zero_()

    @property
    def task_weights(self) -> Tensor:
        """``softmax(ξ)``: the weights of the log-losses (not the effective loss weights)."""
        return self.logits.softmax(0).detach()

    def _move(self, device: torch.device) -> None:
        if self.logits.device != device:
            self.to(device)

    def update(self, new_losses: Tensor) -> None:
        """Update the logits from the losses after the optimizer step (all tasks, shape [T]).

        Uses the losses stored by the last :meth:`combine`; a second call without a
        :meth:`combine` in between does nothing.
        """
        check_losses(new_losses, self.num_tasks)
        new = new_losses.detach()
        self._move(new.device)
        self._update(new, torch.ones(self.num_tasks, dtype=torch.bool, device=new.device))

    def _update(self, new: Tensor, new_present: Tensor) -> None:
        dt = self.logits.dtype
        common = self.prev_present & new_present
        log_old = (self.prev_losses.clamp_min(0) + self.eps).log()
        log_new = (new.to(dt).clamp_min(0) + self.eps).log()
        delta = torch.where(common, log_old - log_new, torch.zeros((), dtype=dt, device=new.device))
        z = self.logits.masked_fill(~common, float("-inf")).softmax(0)
        z = torch.where(common, z, torch.zeros((), dtype=dt, device=new.device))  # no NaN if empty
        grad = z * (delta - (z * delta).sum())
        grad = grad + self.weight_decay * self.logits
        # A step only when some task was present both times (no host sync: masked update).
        on = common.any().to(dt)
        self.adam_steps.add_(on)
        steps = self.adam_steps.clamp_min(1)
        self.exp_avg.mul_(1 - (1 - _BETA1) * on).add_(on * (1 - _BETA1) * grad)
        self.exp_avg_sq.mul_(1 - (1 - _BETA2) * on).add_(on * (1 - _BETA2) * grad * grad)
        m_hat = self.exp_avg / (1 - _BETA1**steps)
        v_hat = self.exp_avg_sq / (1 - _BETA2**steps)
        self.logits.sub_(on * self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS))
        self.prev_present.zero_()

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        self._move(losses.device)
        mask = (
            torch.ones(self.num_tasks, dtype=torch.bool, device=losses.device)
            if present is None
            else present.to(losses.device)
        )
        L = losses.detach()
        if self.update_from_next_step:
            self._update(L, mask)
        z = self.logits.to(losses.dtype).masked_fill(~mask, float("-inf")).softmax(0)
        z = torch.where(mask, z, torch.zeros((), dtype=losses.dtype, device=losses.device))
        D = losses.clamp_min(0) + self.eps
        inv = z / D.detach()
        c = inv.sum()
        self.last_weights = (inv / c).detach()
        self.prev_losses.copy_(torch.where(mask, L.to(self.prev_losses.dtype), 0.0))
        self.prev_present.copy_(mask)
        return z * D.log() / c
