"""Aligned-MTL: align the gradients by making their system well conditioned (CVPR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from taskbalance.validation import is_number

from ..base import GradientMethod, check_task_weights
from ..registry import register
from ..solvers import normalized, present_weights

__all__ = ["AlignedMTL", "aligned_balance_matrix"]


def aligned_balance_matrix(G: Tensor, eps: float) -> Tensor:
    """The balance matrix ``B = √λ_min V Λ^{-1/2} Vᵀ`` of a (float64) Gramian ``G = V Λ Vᵀ``.

    Only the eigenvalues above ``eps · n · λ_max`` count (the non-null eigenspace; rank as in
    ``matrix_rank``); ``λ_min`` is the smallest of them, the square of the smallest positive
    singular value of J. Every entry of the spectrum of B is ``√(λ_min/λ_i) ≤ 1``, so B is
    bounded whatever the conditioning. A zero G gives ``B = 0``.
    """
    n = G.shape[0]
    lam, V = torch.linalg.eigh(G)
    lam_max = lam[-1].clamp_min(0)
    keep = lam > eps * n * lam_max
    keep = keep & (lam_max > 0)
    big = torch.tensor(float("inf"), dtype=G.dtype, device=G.device)
    lam_min = torch.where(keep, lam, big).min()
    lam_min = torch.where(torch.isfinite(lam_min), lam_min, torch.zeros_like(lam_min))
    safe = torch.where(keep, lam, torch.ones_like(lam))
    spectrum = torch.where(keep, (lam_min / safe).sqrt(), torch.zeros_like(lam))
    return (V * spectrum) @ V.T


@register(
    "aligned_mtl",
    paper="Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023 "
    "(arXiv:2305.19000)",
)
class AlignedMTL(GradientMethod):
    """Aligned-MTL: ``d = Jᵀ B w``, the task gradients aligned to condition number 1.

    Senushkin et al. 2023 (https://arxiv.org/abs/2305.19000): with the eigendecomposition
    ``G = J Jᵀ = V Λ Vᵀ`` and ``σ_min²`` its smallest positive eigenvalue, the balance matrix
    ``B = σ_min V Λ^{-1/2} Vᵀ`` (on the non-null eigenspace) makes the aligned gradients
    ``Ĵ = B J`` orthogonal with equal norms ``σ_min`` (``Ĵ Ĵᵀ = σ_min² I`` for full-rank J), and
    the update is ``d = Ĵᵀ w = Jᵀ (B w)`` for pre-defined task weights ``w`` (uniform ``1/n`` by
    default). ``last_weights`` are the effective weights ``B w``.

    Args:
        task_weights: the pre-defined weights ``w``, one non-negative number per task (the tasks
            present are used as given); default uniform ``1/n``.
        eps: relative eigenvalue threshold for the rank (times ``n · λ_max``); default: 10 × the
            machine epsilon of J's dtype (float32 gradients carry that much rounding).
    """

    uses_gramian = True

    def __init__(
        self,
        num_tasks: int,
        task_weights: Sequence[float] | Tensor | None = None,
        eps: float | None = None,
    ) -> None:
        super().__init__(num_tasks)
        self.task_weights: Tensor | None = None
        if task_weights is not None:
            self.task_weights = check_task_weights("task_weights", task_weights, num_tasks)
        if eps is not None and (not is_number(eps) or not (0 < eps < 1)):
            raise ValueError(f"eps must be a number in (0, 1) or None, got {eps!r}")
        self.eps = None if eps is None else float(eps)

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        n = G.shape[0]
        eps = self.eps if self.eps is not None else 10 * torch.finfo(grad_dtype).eps
        B = aligned_balance_matrix(normalized(G), eps)
        return B @ present_weights(self.task_weights, n, present, B.device)
