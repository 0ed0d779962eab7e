"""IMTL-G and IMTL: impartial multi-task learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..base import GradientMethod, imtl_l_transform
from ..registry import register
from ..solvers import normalized

__all__ = ["IMTL", "IMTLG", "imtl_g_weights"]

PAPER = (
    "Liu et al., Towards impartial multi-task learning, ICLR 2021, "
    "https://openreview.net/forum?id=IMPnRXEWpvr"
)


def _lstsq_min_norm(M: Tensor, b: Tensor, steps: int = 8) -> Tensor:
    """Minimum-norm least-squares solution of ``M x = b`` without host synchronisation.

    Iterated Tikhonov regularisation started at 0 (each step solves
    ``(MᵀM + δI) x_{k+1} = Mᵀb + δ x_k``); it converges to ``pinv(M) b`` and stays finite for
    singular ``M``.
    """
    A = M.T @ M
    delta = 1e-10 * A.diagonal().amax().clamp_min(1e-300)
    Areg = A + delta * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    LU, piv, _ = torch.linalg.lu_factor_ex(Areg)
    rhs = M.T @ b
    x = torch.zeros_like(rhs)
    for _ in range(steps):
        x = torch.linalg.lu_solve(LU, piv, (rhs + delta * x).unsqueeze(-1)).squeeze(-1)
    return x


def imtl_g_weights(G: Tensor, rcond: float = 1e-11) -> Tensor:
    """IMTL-G's weights ``α`` (``Σα = 1``) from the Gramian ``G = J Jᵀ`` (float64 ``[n, n]``).

    The paper's closed form ``α_{2:n} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:n}`` with
    ``D = [g_1 − g_t]_t``, ``U = [u_1 − u_t]_t``, ``u_t = g_t/‖g_t‖`` is the unique solution of
    ``Σ_t α_t = 1`` and ``dᵀu_t = c`` for every ``t`` (``d = Σ α_t g_t``); this function solves
    that ``(n+1) x (n+1)`` system in ``(α, c)``, whose entries are ``u_t·g_s = G_ts/‖g_t‖`` - no
    reference task, so it is symmetric in the tasks.

    Degenerate inputs, documented fallbacks: a zero gradient has no direction, so its task gets
    ``α_t = 0`` (the others are balanced among themselves; all zero gives ``α = 1/n``). When the
    system is singular or nearly so (identical or colinear gradients, rank deficiency), ``α`` is
    its minimum-norm least-squares solution in the unit form below (the pseudo-inverse
    solution; identical tasks share equally). The result is always finite.

    The system is solved for ``β_t = α_t‖g_t‖`` (rows ``u_t·u_s``), so gradient norms spread
    from 1e-12 to 1e12 keep it well conditioned. ``rcond``: C counts as singular when its
    smallest LU pivot is below ``rcond`` times the largest (raise it for float32 gradients,
    whose Gramian carries that much rounding: duplicated float32 rows are not exactly singular).
    """
    n = G.shape[0]
    G = normalized(G)
    sq = G.diagonal().clamp_min(0)
    nonzero = sq > 1e-280
    norms = torch.where(nonzero, sq.sqrt(), torch.ones_like(sq))
    # Unit form: with α_s = β_s/‖g_s‖ the conditions read C β = c·1 (C = D⁻¹GD⁻¹, entries in
    # [-1, 1]) and Σ_s β_s/‖g_s‖ = 1, so norms spread over many orders of magnitude only enter
    # through the sum row (scaled to max 1), never the conditioning of the system.
    C = G / (norms[:, None] * norms[None, :])
    inv = torch.where(nonzero, 1.0 / norms, 0.0)
    inv = inv / inv.amax().clamp_min(1e-300)
    M = G.new_zeros(n + 1, n + 1)
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    M[:n, :n] = torch.where(nonzero[:, None], C, eye)
    M[:n, n] = -nonzero.to(G.dtype)
    M[n, :n] = inv
    b = G.new_zeros(n + 1)
    b[n] = 1.0
    any_nonzero = nonzero.any()
    # All rows zero: the sum row would be empty; fall back to uniform weights.
    M[n, :n] = torch.where(any_nonzero, M[n, :n], torch.ones_like(M[n, :n]))
    M[:n, :n] = torch.where(any_nonzero, M[:n, :n], eye - 1.0 / n)
    inv = torch.where(any_nonzero, inv, torch.ones_like(inv))

    # A well-conditioned C: β = C⁻¹1 up to the scale c, fixed by Σα = 1 (C's entries are in
    # [-1, 1], so its pivots say whether it is regular whatever the norms). Otherwise (nearly
    # singular C, or c = 0 as for opposite gradients) the minimum-norm least-squares solution
    # of the bordered system in (β, c).
    Cz = M[:n, :n]
    LU, piv, info = torch.linalg.lu_factor_ex(Cz)
    pivots = LU.diagonal().abs()
    regular = (info == 0) & (pivots.amin() > rcond * pivots.amax())
    ones = torch.where(any_nonzero, nonzero.to(G.dtype), torch.ones_like(sq) / n)
    beta = torch.linalg.lu_solve(LU, piv, ones.unsqueeze(-1)).squeeze(-1)
    a = beta * inv
    total = a.sum()
    direct = regular & torch.isfinite(a).all() & (total.abs() > 1e-12 * a.abs().sum())
    alpha_direct = a / torch.where(direct, total, torch.ones_like(total))
    x = _lstsq_min_norm(M, b)
    alpha_ls = torch.nan_to_num(x[:n] * inv, nan=0.0, posinf=0.0, neginf=0.0)
    # Σα = 1 exactly (the least-squares fallback may leave a tiny residual).
    share = torch.where(any_nonzero, nonzero.to(G.dtype), torch.ones_like(sq))
    alpha_ls = alpha_ls + share * (1.0 - alpha_ls.sum()) / share.sum()
    return torch.where(direct, alpha_direct, alpha_ls)


@register("imtl_g", paper=PAPER)
class IMTLG(GradientMethod):
    """IMTL-G: ``d = Σ_t α_t g_t`` with ``Σα = 1`` and equal projections ``dᵀg_t/‖g_t‖``.

    The update has the same component along every task's unit gradient, so no task dominates;
    ``α`` is the paper's closed form, computed from the Gramian (see :func:`imtl_g_weights`
    for the degenerate cases). The paper applies it to the gradients w.r.t. the shared
    features; param mode works too.

    Paper: https://openreview.net/forum?id=IMPnRXEWpvr
    """

    uses_gramian = True

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        return imtl_g_weights(G, rcond=max(1e-11, 50 * torch.finfo(grad_dtype).eps))


@register("imtl", paper=PAPER)
class IMTL(IMTLG):
    """IMTL: IMTL-L's learnable loss scales plus IMTL-G's gradient balance (the full method).

    The task losses are transformed to ``e^{s_t} L_t − s_t`` (:meth:`transform_losses`, with
    learnable ``s``, initialised at 0), their gradients aggregated by IMTL-G. Give
    ``balancer.parameters()`` to the optimizer so ``s`` is learned: ``s`` receives the
    gradient of the sum of the transformed losses. ``last_weights`` are the effective weights of
    the raw losses, ``α_t e^{s_t}``.

    Paper: https://openreview.net/forum?id=IMPnRXEWpvr
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.log_scales = nn.Parameter(torch.zeros(num_tasks))

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.log_scales.zero_()

    def transform_losses(self, losses: Tensor) -> Tensor:
        return imtl_l_transform(losses, self.log_scales)

    def _reported_weights(self, w: Tensor, present: Tensor | None) -> Tensor:
        scales = torch.exp(self.log_scales.detach()).to(device=w.device, dtype=w.dtype)
        if present is not None:
            scales = scales[present.to(w.device)]
        return (w * scales).detach()
