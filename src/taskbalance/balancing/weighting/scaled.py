"""Loss scaling: divide every loss by its reference level, then weight uniformly."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import LossMethod, check_choice, check_positive, follow, present_mask
from ..registry import register


@register("scaled", paper="scale every loss to one range, then weight uniformly")
class ScaledWeighting(LossMethod):
    """Loss scaling: ``Σ_t L_t / L̄_t``, every loss divided by its reference level.

    Weights ``w_t = 1 / max(|L̄_t|, eps)`` with ``L̄_t`` detached:

    * ``reference="first"`` (default): ``L̄_t`` is task t's loss at the first step it is present,
      so every term starts at 1 and measures the progress made since;
    * ``reference="running"``: an exponential running mean started at that first loss,
      ``L̄_t ← m·L̄_t + (1 − m)·L_t`` with ``m = momentum``, updated before weighting.

    Args:
        reference: ``"first"`` or ``"running"``.
        momentum: ``m`` in ``[0, 1)`` for ``reference="running"`` (``0`` divides by the current
            loss itself).
        eps: lower bound of ``|L̄_t|``, so a zero reference loss gives a large finite weight.

    A task absent from a step keeps its reference (no update from its placeholder zero) and gets
    weight 0 that step.
    """

    reference_losses: Tensor
    seen: Tensor

    def __init__(
        self,
        num_tasks: int,
        reference: str = "first",
        momentum: float = 0.9,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(num_tasks)
        self.reference = check_choice("reference", reference, ("first", "running"))
        self.momentum = check_positive("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.eps = check_positive("eps", eps)
        self.register_buffer("reference_losses", torch.zeros(num_tasks))
        self.register_buffer("seen", torch.zeros(num_tasks, dtype=torch.bool))

    def reset(self) -> None:
        super().reset()
        self.reference_losses.zero_()
        self.seen.zero_()

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        p = present_mask(losses, present)
        ref = follow(self.reference_losses, losses)
        seen = follow(self.seen, losses)
        cur = losses.detach().to(ref.dtype)
        if self.reference == "first":
            new = torch.where(seen, ref, cur)
        else:
            m = self.momentum
            new = torch.where(seen, m * ref + (1 - m) * cur, cur)
        new = torch.where(p, new, ref)
        self.reference_losses = new
        self.seen = seen | p
        w = 1.0 / new.abs().clamp_min(self.eps)
        w = torch.where(p, w, 0.0).to(losses.dtype)
        self.last_weights = w
        return w * losses

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, reference={self.reference!r}"
