"""IMTL-L: the loss-balance half of impartial multi-task learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import LossMethod, imtl_l_transform, present_mask
from ..registry import register

__all__ = ["ImpartialLossWeighting", "imtl_l_transform"]


@register(
    "imtl_l",
    paper="Liu et al., Towards impartial multi-task learning, ICLR 2021, "
    "https://openreview.net/forum?id=IMPnRXEWpvr",
)
class ImpartialLossWeighting(LossMethod):
    """IMTL-L: learnable loss scales, ``Σ_t e^{s_t} L_t − s_t`` (Liu et al., ICLR 2021).

    ``s_t`` are learnable (initialised at 0, so the first step equals equal weighting); the
    regulariser ``−s_t`` keeps them from collapsing, and at the optimum over ``s_t`` the scaled
    loss ``e^{s_t} L_t`` is 1 for every task. Effective weights: ``e^{s_t}``. Give
    ``balancer.parameters()`` to the optimizer so ``s`` is learned.

    Paper: https://openreview.net/forum?id=IMPnRXEWpvr
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.log_scales = nn.Parameter(torch.zeros(num_tasks))

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.log_scales.zero_()

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        terms = imtl_l_transform(losses, self.log_scales)
        w = torch.exp(self.log_scales.detach().to(device=losses.device, dtype=losses.dtype))
        self.last_weights = torch.where(present_mask(losses, present), w, 0.0)
        return terms
