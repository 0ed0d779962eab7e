"""ConFIG: conflict-free inverse gradients (Liu et al., ICLR 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import GradientMethod
from ..registry import register
from ..solvers import unit_form

__all__ = ["ConFIG", "config_weights"]


def config_weights(G: Tensor) -> Tensor:
    """Weights ``w`` with ``Jᵀw`` the ConFIG direction, from the float64 Gramian ``G``.

    With unit rows ``ĝ_t = g_t/‖g_t‖`` (Gramian ``Ĝ``, ``G = D Ĝ D``), the conflict-free
    direction is ``g_c = Ûᵀ Ĝ⁺ 1 = Jᵀ (a / D)`` with ``a = Ĝ⁺ 1`` (the minimum-norm ``x`` with
    ``ĝ_tᵀx`` equal for all t, i.e. ``[ĝ_1 … ĝ_n]ᵀ⁺ 1``); the update is
    ``d = (Σ_t g_tᵀ u) u`` with ``u = g_c / ‖g_c‖``, ``‖g_c‖² = aᵀĜa``. Hence
    ``w = (a/D) · (1ᵀ D Ĝ a) / (aᵀ Ĝ a)`` (0 when every gradient is zero).

    ``Ĝ⁺`` is the Hermitian pseudo-inverse with eigenvalues below ``n·ε·λ_max`` dropped (rows
    that are identical or linearly dependent share the weight that reaches them).
    """
    Gu, D = unit_form(G)
    n = Gu.shape[0]
    a = torch.linalg.pinv(Gu, hermitian=True, rtol=n * torch.finfo(torch.float64).eps).sum(1)
    sq = a @ (Gu @ a)  # ‖g_c‖² in units of the unit rows
    length = (D * (Gu @ a)).sum()  # Σ_t g_tᵀ g_c
    ok = sq > 0
    return torch.where(ok, (a / D) * length / torch.where(ok, sq, 1.0), 0.0)


@register(
    "config",
    paper="Liu et al., ConFIG: Towards Conflict-free Training of Physics Informed Neural "
    "Networks, ICLR 2025 (arXiv:2408.11104)",
)
class ConFIG(GradientMethod):
    """ConFIG: the direction with equal cosine to every task gradient, scaled by their projections.

    Liu et al. 2024 (https://arxiv.org/abs/2408.11104), Eq. 2: with unit gradients
    ``ĝ_t = g_t/‖g_t‖``, ``g_c = [ĝ_1 … ĝ_n]ᵀ⁺ 1`` (the minimum-norm vector whose cosine with
    every ``ĝ_t`` is the same), ``u = g_c/‖g_c‖`` and ``d = (Σ_t g_tᵀu) u``. When the unit
    gradients are linearly independent ``g_tᵀ d > 0`` for every task (no conflict). Computed on
    the ``n × n`` Gramian (see :func:`config_weights`), so ``d = Σ_t w_t g_t``. ``d`` scales
    linearly with J. A zero gradient is left out (its unit vector is 0, as in the authors'
    code).
    """

    uses_gramian = True

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        return config_weights(G)
