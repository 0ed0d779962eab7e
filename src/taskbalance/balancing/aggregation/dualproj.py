"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import GradientMethod, check_pref_weights
from ..registry import register
from ..solvers import dual_cone_weights, present_preferences, unit_form

__all__ = ["DualProj", "dualproj_weights"]


def dualproj_weights(G: Tensor, p: Tensor) -> Tensor:
    """Weights ``v`` with ``Jᵀv`` the Euclidean projection of ``Jᵀp`` onto ``{x : J x ≥ 0}``.

    ``v = argmin_{v ≥ p} vᵀ G v`` (the dual of the projection), solved exactly by the
    active-set NNLS of :func:`dual_cone_weights`, on the unit-diagonal Gramian: with
    ``G = D Ĝ D``, ``D̃ = D / max D`` and ``v = u / D̃`` the problem is
    ``min_{u ≥ D̃ p} uᵀ Ĝ u``, free of the spread of the gradient norms.
    """
    Gu, D = unit_form(G)
    Dt = D / D.max()
    u = dual_cone_weights(Gu, (Dt * p.to(Gu))[None])[0]
    return u / Dt


@register(
    "dualproj",
    paper="Quinton & Rey, Jacobian descent for multi-objective optimization, 2024 "
    "(arXiv:2406.16232); the projection of Lopez-Paz & Ranzato, GEM, NeurIPS 2017 "
    "(arXiv:1706.08840)",
)
class DualProj(GradientMethod):
    """DualProj: ``d = π_J(Σ_t p_t g_t)``, the weighted mean projected onto the dual cone.

    ``π_J`` is the Euclidean projection onto ``{x : g_tᵀx ≥ 0 for all t}`` (the directions
    that conflict with no task), as in GEM's Eq. 11 (Lopez-Paz & Ranzato 2017); named and
    studied as an aggregator by Quinton & Rey 2024 (https://arxiv.org/abs/2406.16232, the
    TorchJD ``DualProj``). With ``G = J Jᵀ`` the projection is ``Jᵀv``,
    ``v = argmin_{v ≥ p} vᵀGv``, solved exactly on the Gramian (see :func:`dualproj_weights`).
    Properties: ``g_tᵀd ≥ 0`` for every task; ``d`` is the weighted mean when that already
    conflicts with no task; ``d`` scales linearly with J.

    Args:
        pref_weights: non-negative weights ``p``, one per task (normalised to sum to 1 over the
            tasks present). Default: uniform ``1/n`` (the mean, TorchJD's default).
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
        return dualproj_weights(G, present_preferences(self.pref_weights, n, present, G.device))
