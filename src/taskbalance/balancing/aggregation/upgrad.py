"""UPGrad: average of the projections of every task gradient onto the dual cone of the rows.

Quinton & Rey, "Jacobian descent for multi-objective optimization", 2024
(https://arxiv.org/abs/2406.16232; the method of TorchJD).

This module also holds :func:`dual_cone_weights` (an exact, batched Lawson-Hanson non-negative
least-squares solver that works on the Gramian only), which CAGrad uses too. The Gramian helpers
:func:`normalized_gramian` and :func:`unit_gramian` live in ``solvers`` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import GradientMethod, check_task_weights
from ..registry import register
from ..solvers import normalized_gramian, present_weights, unit_form, unit_gramian

__all__ = ["UPGrad", "dual_cone_weights", "normalized_gramian", "unit_gramian"]


def _masked_solve(G: Tensor, free: Tensor, rhs: Tensor, ridge: float) -> Tensor:
    """Solve ``G_FF z_F = rhs_F`` (z = 0 off F) for each row's free set F, batched."""
    k, n = free.shape
    pair = free[:, :, None] & free[:, None, :]
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    M = torch.where(pair, G.expand(k, n, n), torch.zeros((), dtype=G.dtype, device=G.device))
    M = M + eye * torch.where(free, ridge, 1.0)[:, None, :]
    z = torch.linalg.solve(M, (rhs * free)[..., None])[..., 0]
    return torch.where(free, z, torch.zeros((), dtype=G.dtype, device=G.device))


def dual_cone_weights(
    G: Tensor, Y: Tensor, *, tol: float = 1e-12, max_iter: int | None = None
) -> Tensor:
    """Weights of the projections of ``Jᵀy`` (each row ``y`` of ``Y``) onto ``{x : J x ≥ 0}``.

    For each row ``y`` returns ``v = y + μ*`` with ``μ* = argmin_{μ ≥ 0} (y + μ)ᵀ G (y + μ)``, so
    that ``Jᵀv`` is the Euclidean projection of ``Jᵀy`` onto the dual cone of the rows of J
    (the dual of ``min ‖x − Jᵀy‖² s.t. J x ≥ 0``). The inner problem is the non-negative least
    squares ``min_{μ≥0} ‖Jᵀμ + Jᵀy‖²``, solved exactly by the Lawson-Hanson active-set method,
    written with the Gramian only (``G`` is ``[n, n]``, float64, ideally normalised) and batched
    over the rows of ``Y`` (``[k, n]``).
    """
    k, n = Y.shape
    if max_iter is None:
        max_iter = 3 * n + 10
    dtype, device = G.dtype, G.device
    ridge = 1e-13 * n
    c = Y @ G  # G y per row (G symmetric)
    mu = torch.zeros(k, n, dtype=dtype, device=device)
    free = torch.zeros(k, n, dtype=torch.bool, device=device)
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    rows = torch.arange(k, device=device)
    for _ in range(max_iter):
        grad = mu @ G + c  # half the gradient of the objective w.r.t. μ
        cand = ~free & (grad < -tol)
        active = cand.any(1)
        if not bool(active.any()):
            break
        j = torch.where(cand, grad, inf).argmin(1)
        free[rows[active], j[active]] = True
        for _ in range(n + 1):
            z = _masked_solve(G, free, -c, ridge)
            bad = free & (z <= 0) & active[:, None]
            need = bad.any(1)
            mu = torch.where((active & ~need)[:, None], z, mu)
            if not bool(need.any()):
                break
            # Step from μ towards z until the first free variable hits zero; drop it.
            gap = mu - z
            ratio = torch.where(bad & (gap > 0), mu / torch.where(gap > 0, gap, 1.0), 0.0)
            ratio = torch.where(bad, ratio, inf)
            alpha = ratio.min(1).values.clamp(0.0, 1.0)
            stepped = mu + alpha[:, None] * (z - mu)
            mu = torch.where(need[:, None], stepped, mu)
            drop = need[:, None] & free & (mu <= tol)
            free = free & ~drop
            mu = torch.where(free, mu.clamp_min(0), torch.zeros((), dtype=dtype, device=device))
            active = need
    return Y + mu


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
    solved exactly (Lawson-Hanson active set on the Gramian, batched over i). So
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
        self.pref_weights: Tensor | None = None
        if pref_weights is not None:
            p = check_task_weights("pref_weights", pref_weights, num_tasks)
            if not bool(p.any()):
                raise ValueError(f"pref_weights must not be all zero, got {p.tolist()}")
            self.pref_weights = p

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        n = G.shape[0]
        # With v = D⁻¹u the problem min_{v ≥ e_i} vᵀGv becomes min_{u ≥ D_i e_i} uᵀĜu
        # (Ĝ = D⁻¹GD⁻¹), homogeneous in D_i: solve min_{u ≥ e_i} uᵀĜu, v_i = D_i D⁻¹ u_i.
        Gu, D = unit_form(G)
        dev = Gu.device
        p = present_weights(self.pref_weights, n, present, dev)
        if self.pref_weights is not None:
            total = p.sum()
            p = torch.where(total > 0, p / torch.where(total > 0, total, 1.0), 1.0 / n)
        U = dual_cone_weights(Gu, torch.eye(n, dtype=torch.float64, device=dev))
        V = D[:, None] * U / D[None, :]
        return (p[:, None] * V).sum(0)
