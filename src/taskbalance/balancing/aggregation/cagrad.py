"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from taskbalance.validation import is_int

from ..base import GradientMethod, check_positive
from ..registry import register
from ..solvers import dual_cone_weights, normalized, project_simplex

__all__ = ["CAGrad", "cagrad_weights", "project_simplex"]


def _polish(G: Tensor, b: Tensor, r: float, x: Tensor) -> Tensor | None:
    """Exact KKT solution of the CAGrad dual near the iterate x, as ``μ = (r/‖g_w‖) w``.

    For a guessed support S (first that of x): ``(G μ)_S + b_S = λ 1`` and ``μᵀ G μ = r²``;
    with ``a = G_SS⁻¹ 1``, ``β = G_SS⁻¹ b_S`` this gives ``μ_S = λ a − β`` and the quadratic
    ``A λ² − 2 B λ + C = r²`` (``A = 1ᵀa``, ``B = 1ᵀβ``, ``C = b_Sᵀβ``) whose larger root has
    ``Σ μ > 0``. Active-set updates of the guess: some ``μ_t < 0`` drops the most negative t; no
    valid root (or a singular ``G_SS``) drops the t with the smallest ``x_t``; a task off S with
    ``(b + Gμ)_t < λ`` (it would improve less than λ) joins S. Returns None after ``2n + 2``
    guesses; the caller certifies any result by its duality gap.
    """
    n = b.shape[0]
    support = x > 0
    for _ in range(2 * n + 2):
        idx = support.nonzero().flatten()
        if idx.numel() == 0:
            return None
        GS = G[idx][:, idx]
        rhs = torch.stack([torch.ones_like(b[idx]), b[idx]], 1)
        sol, info = torch.linalg.solve_ex(GS, rhs)
        drop = int(idx[x[idx].argmin()])
        if int(info) == 0 and bool(torch.isfinite(sol).all()):
            a, beta = sol[:, 0], sol[:, 1]
            A, B, C = float(a.sum()), float(beta.sum()), float(b[idx] @ beta)
            disc = B * B - A * (C - r * r)
            if A > 0 and disc >= 0:
                lam = (B + math.sqrt(disc)) / A
                mu_s = lam * a - beta
                worst = int(mu_s.argmin())
                if float(mu_s[worst]) >= -1e-12 * max(1.0, float(mu_s.abs().max())):
                    mu = torch.zeros_like(b)
                    mu[idx] = mu_s.clamp_min(0)
                    violation = torch.where(support, -math.inf, lam - (b + G @ mu))
                    j = int(violation.argmax())
                    if float(violation[j]) <= 1e-12:
                        return mu
                    support = support.clone()
                    support[j] = True
                    continue
                drop = int(idx[worst])
        support = support.clone()
        support[drop] = False
    return None


def cagrad_weights(G: Tensor, c: float, *, max_iter: int = 500, tol: float = 1e-10) -> Tensor:
    """Coefficients ``a`` with ``d = Jᵀa`` the CAGrad direction (before rescaling).

    ``G`` is the (normalised, float64) Gramian. The dual
    ``min_{w ∈ Δ} F(w) = wᵀ b + r ‖g_w‖`` (``b = G 1/n``, i.e. ``g_wᵀ g_0``; ``g_w = Jᵀw``;
    ``r = c ‖g_0‖``) is solved on the Gramian by accelerated projected gradient (FISTA with
    backtracking and adaptive restart). Every few iterations the support of the iterate is
    used to solve the KKT conditions exactly (:func:`_polish`, one small linear solve); the
    result is accepted when its duality gap ``F(w) − min_t g_tᵀ d`` is below ``tol`` (relative
    to the largest ``‖g_t‖²``), which is a certificate of optimality. Otherwise the projected
    gradient iterate after ``max_iter`` iterations is used. Then ``d = g_0 + (r/‖g_w‖) g_w``,
    i.e. ``a = 1/n + μ`` with ``μ = (r/‖g_w‖) w``.

    Degenerate case: when the optimum sits where ``g_w = 0`` (gradients that cancel out; the
    best worst-case improvement is 0) the formula is 0/0; the projection of ``g_0`` onto the cone
    ``{x : J x ≥ 0}`` lies in the ball ``‖x − g_0‖ ≤ r`` and is an optimal primal direction; it
    is used when it is at least as good.
    """
    n = G.shape[0]
    w0 = torch.full((n,), 1.0 / n, dtype=G.dtype, device=G.device)
    b = G @ w0
    g0_sq = float((w0 @ b).clamp_min(0))
    r = c * math.sqrt(g0_sq)
    if r <= 1e-12:  # g_0 = 0 or c = 0: the direction is g_0 itself
        return w0
    dual = _Dual(G, b, r)
    polished, x, sx = _solve_dual(dual, w0, max_iter, tol)
    if polished is not None:
        return polished
    return _best_candidate(dual, w0, x, sx, tol)


class _Dual:
    """The CAGrad dual ``F(w) = wᵀ b + r ‖g_w‖`` on the Gramian, and the duality gap of a
    primal candidate."""

    def __init__(self, G: Tensor, b: Tensor, r: float) -> None:
        self.G, self.b, self.r = G, b, r

    def value(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(F(w), G w, ‖g_w‖)``."""
        q = self.G @ w
        s = (w @ q).clamp_min(0).sqrt()
        return w @ self.b + self.r * s, q, s

    def certify(self, mu: Tensor) -> float:
        """Duality gap of ``d = g_0 + Jᵀμ`` (inf when d leaves the ball)."""
        G, b, r = self.G, self.b, self.r
        q = G @ mu
        norm2 = float(mu @ q)
        total = float(mu.sum())
        if norm2 > r * r * (1 + 1e-8) or total <= 0:
            return float("inf")
        dual = (float(mu @ b) + r * math.sqrt(max(norm2, 0.0))) / total
        return dual - float((b + q).min())


def _solve_dual(
    dual: _Dual, w0: Tensor, max_iter: int, tol: float
) -> tuple[Tensor | None, Tensor, Tensor]:
    """FISTA with backtracking and adaptive restart from ``w0``, polishing the support every
    five iterations. Returns ``(a, x, ‖g_x‖)`` with ``a`` the certified coefficients of a
    polished solution, or ``None`` and the last iterate."""
    G, b, r = dual.G, dual.b, dual.r
    x = w0.clone()
    fx, qx, sx = dual.value(x)
    y, fy, qy, sy = x, fx, qx, sx
    t = 1.0
    L = 1.0
    tried: set[tuple[bool, ...]] = set()
    for k in range(max_iter):
        if k % 5 == 0:
            key = tuple((x > 0).tolist())
            if key not in tried:
                tried.add(key)
                mu = _polish(G, b, r, x)
                if mu is not None and dual.certify(mu) <= tol:
                    return w0 + mu, x, sx
            if float(sx) > 1e-12 and dual.certify((r / sx) * x) <= tol:
                break
        grad = b + r * qy / sy.clamp_min(1e-300)
        while True:
            xn = project_simplex(y - grad / L)
            diff = xn - y
            fn, qn, sn = dual.value(xn)
            if float(fn - fy - grad @ diff - 0.5 * L * (diff @ diff)) <= 1e-15 or L > 1e20:
                break
            L *= 2.0
        if float(fn) > float(fx):  # adaptive restart: the objective went up
            t = 1.0
            y, fy, qy, sy = x, fx, qx, sx
            continue
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = xn + ((t - 1.0) / t_next) * (xn - x)
        fy, qy, sy = dual.value(y)
        x, fx, qx, sx = xn, fn, qn, sn
        t = t_next
        L = max(L * 0.9, 1e-12)
    return None, x, sx


def _best_candidate(dual: _Dual, w0: Tensor, x: Tensor, sx: Tensor, tol: float) -> Tensor:
    """Of the feasible candidates, the one with the highest primal value ``min_t g_tᵀd``."""
    G, b, r = dual.G, dual.b, dual.r
    cands = []
    gap = float("inf")
    if float(sx) > 1e-12:
        mu = (r / sx) * x
        gap = dual.certify(mu)
        cands.append((float((b + G @ mu).min()), w0 + mu))
    if gap > tol:  # degenerate optimum (g_w -> 0): the projection of g_0 onto the dual cone
        v = dual_cone_weights(G, w0[None])[0]
        mu = v - w0
        if float(mu @ (G @ mu)) <= r * r * (1 + 1e-8):
            cands.append((float((G @ v).min()), v))
    if not cands:
        return w0
    return max(cands, key=lambda pair: pair[0])[1]


_RESCALE = {0: "none", 1: "1 / (1 + c²)", 2: "1 / (1 + c)"}


@register(
    "cagrad",
    paper="Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021 "
    "(arXiv:2110.14048)",
)
class CAGrad(GradientMethod):
    """CAGrad: maximise the worst task improvement in a ball around the mean gradient.

    Primal (Liu et al. 2021, https://arxiv.org/abs/2110.14048):
    ``max_d min_t g_tᵀ d  s.t.  ‖d − g_0‖ ≤ c ‖g_0‖``, ``g_0 = (1/n) Σ_t g_t``. Its dual is
    ``min_{w ∈ simplex} g_wᵀ g_0 + √φ ‖g_w‖`` with ``g_w = Σ_t w_t g_t`` and
    ``φ = c² ‖g_0‖²``; the solution is ``d = g_0 + (√φ / ‖g_w‖) g_w``, finally divided by a
    rescale factor. The dual is solved on the ``n × n`` Gramian (see :func:`cagrad_weights`).

    Args:
        c: radius of the ball relative to ``‖g_0‖`` (``c = 0`` gives the mean gradient);
            default 0.4 (the paper's setting on the dense-prediction benchmarks).
        rescale: as the authors' code: ``0`` no rescaling, ``1`` divide by ``1 + c²``
            (default), ``2`` divide by ``1 + c``.
        max_iter: iteration cap of the dual solver.
        tol: duality-gap tolerance of the dual solver (relative to the largest ‖g_t‖²).
    """

    uses_gramian = True

    def __init__(
        self,
        num_tasks: int,
        c: float = 0.4,
        rescale: int = 1,
        max_iter: int = 500,
        tol: float = 1e-10,
    ) -> None:
        super().__init__(num_tasks)
        self.c = check_positive("c", c, allow_zero=True)
        if isinstance(rescale, bool) or rescale not in _RESCALE:
            raise ValueError(
                "rescale must be 0 (none), 1 (divide by 1 + c²) or 2 (divide by 1 + c), "
                f"got {rescale!r}"
            )
        self.rescale = int(rescale)
        if not is_int(max_iter) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.max_iter = max_iter
        self.tol = check_positive("tol", tol)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, c={self.c}, rescale={self.rescale}"

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        Gn = normalized(G)
        coef = cagrad_weights(Gn, self.c, max_iter=self.max_iter, tol=self.tol)
        if self.rescale == 1:
            coef = coef / (1.0 + self.c**2)
        elif self.rescale == 2:
            coef = coef / (1.0 + self.c)
        return coef
