"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

from torch import Tensor

from ..base import LossMethod
from ..registry import register


@register("ew", paper="equal weights (the usual multi-task baseline)")
class EqualWeighting(LossMethod):
    """Equal weighting: ``Σ_t L_t``, every weight 1."""

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        self.last_weights = losses.new_ones(self.num_tasks).detach()
        return losses
