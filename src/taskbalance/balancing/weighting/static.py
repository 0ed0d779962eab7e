"""Static weighting: fixed user weights, hand-set or found by ``taskbalance tune``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import LossMethod
from ..registry import register


@register("static", paper="fixed weights, hand-set or tuned with Optuna (taskbalance tune)")
class StaticWeighting(LossMethod):
    """Static weighting: ``Σ_t w_t L_t`` with fixed, non-negative user weights ``w``."""

    weights: Tensor

    def __init__(self, num_tasks: int, weights: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(num_tasks)
        if weights is None:
            raise ValueError(
                f"method 'static' needs weights=[w_1, ..., w_{num_tasks}] (one per task); "
                "find good ones with `taskbalance tune`"
            )
        raw = weights.tolist() if isinstance(weights, Tensor) else weights
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            raw = [raw]  # one value: the count check below says how many are needed
        try:
            values = [float(w) for w in raw]
        except (TypeError, ValueError):
            raise ValueError(
                f"static option 'weights' must be one number per task ({num_tasks}), e.g. "
                f"weights=[0.7, 1.3] (command line: --option weights=0.7,1.3); got {weights!r}"
            ) from None
        if len(values) != num_tasks:
            raise ValueError(
                f"static weights must have one entry per task ({num_tasks}), got {len(values)}: "
                f"{values}"
            )
        bad = [w for w in values if not math.isfinite(w) or w < 0]
        if bad:
            raise ValueError(f"static weights must be finite and >= 0, got {values}")
        if sum(values) == 0:
            raise ValueError("static weights are all zero; at least one task must have weight > 0")
        self.register_buffer("weights", torch.tensor(values, dtype=torch.float64))

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        w = self.weights.to(device=losses.device, dtype=losses.dtype)
        self.last_weights = w
        return w * losses
