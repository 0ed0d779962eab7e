"""UPGrad: average of the projections of every task gradient onto the dual cone of the rows.

Quinton & Rey, "Jacobian descent for multi-objective optimization", 2024
(https://arxiv.org/abs/2406.16232; the method of TorchJD).

The dual-cone projection (:func:`~taskbalance.balancing.solvers.dual_cone_weights`, an exact
batched non-negative least-squares solver on the Gramian - block principal pivoting, Lawson-Hanson
for rows it leaves open - which CAGrad and DualProj use too) and the Gramian helpers live in
``solvers`` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import GradientMethod, check_pref_weights
from ..registry import register
from ..solvers import (
    dual_cone_weights,
    normalized_gramian,
    present_preferences,
    unit_form,
    unit_gramian,
)

__all__ = ["UPGrad", "dual_cone_weights", "normalized_gramian", "unit_gramian"]


@register(
    "upgrad",
    paper="Quinton & Rey, Jacobian descent for multi-objective optimization, 2024 "
    "(arXiv:2406.16232)",
)
class UPGrad(GradientMethod):
    """UPGrad: ``d = Σ_i p_i π_J(g_i)``, the projections of the gradients onto the dual cone.

    ``π_J(g)`` is the Euclidean projection of ``g`` onto the dual cone ``{x : J x ≥ 0}`` of the
    task gradients (the directions that conflict with no task). With the Gramian ``G = J Jᵀ``,
    ``π_J(g_i) = Jᵀ v_i`` where ``v_i = argmin_{v ≥ e_i} vᵀ G v``, a small non-negative QP
    solved exactly (active-set NNLS on the Gramian, batched over i). So
    ``d = Jᵀ w`` with ``w = Σ_i p_i v_i`` and ``p`` the preference weights (uniform ``1/n`` by
    default: the mean of the projections). Properties (Quinton & Rey 2024,
    https://arxiv.org/abs/2406.16232): ``gᵗᵀ d ≥ 0`` for every task (non-conflicting); if no two
    gradients conflict, ``d`` is the weighted mean ``Σ p_i g_i``; ``d`` scales linearly with J.

    Args:
        pref_weights: non-negative weights ``p`` of the projections, one per task (normalised to
            sum to 1; the tasks present are renormalised). Default: uniform, the paper's UPGrad.
    """

    uses_gramian = True

    def __init__(
        self, num_tasks: int, pref_weights: Sequence[float] | Tensor | None = None
    ) -> None:
        super().__init__(num_tasks)
        self.pref_weights = check_pref_weights(pref_weights, num_tasks)

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        n = G.shape[0]
        # With v = D⁻¹u the problem min_{v ≥ e_i} vᵀGv becomes min_{u ≥ D_i e_i} uᵀĜu
        # (Ĝ = D⁻¹GD⁻¹), homogeneous in D_i: solve min_{u ≥ e_i} uᵀĜu, v_i = D_i D⁻¹ u_i.
        Gu, D = unit_form(G)
        dev = Gu.device
        p = present_preferences(self.pref_weights, n, present, dev)
        U = dual_cone_weights(Gu, torch.eye(n, dtype=torch.float64, device=dev))
        V = D[:, None] * U / D[None, :]
        return (p[:, None] * V).sum(0)
