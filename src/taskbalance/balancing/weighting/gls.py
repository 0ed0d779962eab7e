"""Geometric loss strategy (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import LossMethod, check_positive, present_mask
from ..registry import register

__all__ = ["GeometricLossStrategy"]


@register(
    "gls",
    paper="Chennupati et al., MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss "
    "Strategy for Multi-Task Learning, CVPR Workshops 2019 (arXiv:1904.08492)",
)
class GeometricLossStrategy(LossMethod):
    """Geometric mean of the task losses: ``(Π_t L_t)^{1/T}``.

    Chennupati et al. 2019 (https://arxiv.org/abs/1904.08492). Computed as
    ``exp(mean_t log(L_t + ε))`` (no overflow or underflow of the product for many tasks or
    extreme losses). The gradient is ``Σ_t w_t ∇L_t`` with effective weights
    ``w_t = GLS / (T (L_t + ε))`` (``last_weights``): a task with a small loss gets a large
    weight, so the losses are balanced by their relative rather than absolute decrease.
    In a step where some tasks are absent the mean is over the tasks present.

    The losses must be positive (``ε = 0``, as in the paper) or non-negative (``ε > 0``); a loss
    outside that range raises ``ValueError`` naming the task.

    Args:
        eps: ``ε >= 0`` added to every loss inside the logarithm (paper: none).
    """

    def __init__(self, num_tasks: int, eps: float = 0.0) -> None:
        super().__init__(num_tasks)
        self.eps = check_positive("eps", eps, allow_zero=True)
        self.loss_sign = "positive" if self.eps == 0 else "non-negative"  # log(L + eps)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, eps={self.eps}"

    def _combine(self, losses: Tensor, present: Tensor | None) -> Tensor:
        if present is None:  # the usual step: no masking work
            total = (losses + self.eps).log().mean().exp()
            self.last_weights = total.detach() / (self.num_tasks * (losses.detach() + self.eps))
            return total
        p = present_mask(losses, present)
        # Absent tasks' placeholders are replaced before the log (no inf, no NaN gradient).
        logs = torch.where(p, (torch.where(p, losses, 1.0) + self.eps).log(), 0.0)
        n = p.sum().to(losses.dtype)
        total = (logs.sum() / n).exp()
        w = total.detach() / (n * (losses.detach() + self.eps))
        self.last_weights = torch.where(p, w, 0.0)
        return total

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        raise NotImplementedError("gls is not a sum of per-task terms; use combine()")
