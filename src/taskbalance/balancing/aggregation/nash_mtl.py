"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.validation import is_int

from ..base import GradientMethod, check_positive
from ..registry import register
from ..solvers import unit_form

__all__ = ["NashMTL", "nash_residual", "nash_weights"]


def _newton(A: Tensor, alpha: Tensor, max_iter: int, tol: float) -> Tensor:
    """Damped Newton on ``φ(α) = ½ αᵀAα − Σ log α_t`` from ``α > 0``."""

    def phi(a: Tensor) -> Tensor:
        return 0.5 * (a @ (A @ a)) - a.log().sum()

    f = phi(alpha)
    previous = float("inf")
    for _ in range(max_iter):
        grad = A @ alpha - 1.0 / alpha
        H = A + torch.diag(1.0 / alpha**2)
        step = -torch.linalg.solve_ex(H, grad)[0]
        decrement = float(-(grad @ step))
        if not decrement > tol:  # converged, or H singular to rounding (α escaping to ∞)
            break
        if decrement < 0.01:
            # φ is self-concordant: with a Newton decrement below 0.1 the full step stays in
            # α > 0 and converges quadratically (Boyd & Vandenberghe, §9.6), so no line search
            # - whose test on φ would stall at φ's rounding level before α is exact.
            if decrement >= previous:
                break  # at rounding level
            alpha, f, previous = alpha + step, phi(alpha + step), decrement
            continue
        # Largest step keeping α > 0 (stay a fraction away from the boundary).
        neg = step < 0
        t = 1.0
        if bool(neg.any()):
            t = min(1.0, 0.99 * float((-alpha[neg] / step[neg]).min()))
        while True:
            cand = alpha + t * step
            fc = phi(cand)
            if float(fc) <= float(f) - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        if t < 1e-12:
            break
        alpha, f = cand, fc
    return alpha


def nash_residual(G: Tensor, alpha: Tensor) -> Tensor:
    """``max_t |α_t (Gα)_t − 1|``, the violation of the Nash condition (``inf`` if not finite)."""
    r = (alpha * (G @ alpha) - 1).abs().amax()
    ok = torch.isfinite(alpha).all() & (alpha > 0).all() & torch.isfinite(r)
    return torch.where(ok, r, torch.full_like(r, torch.inf))


def nash_weights(
    G: Tensor, *, ridge: float = 1e-10, max_iter: int = 100, tol: float = 1e-20
) -> Tensor:
    """The Nash bargaining weights ``α > 0`` with ``G α = 1/α`` (float64 Gramian ``G``).

    ``G α = 1/α`` is the stationarity condition of the strictly convex
    ``φ(α) = ½ αᵀ G α − Σ_t log α_t`` on ``α > 0``, minimised by damped Newton's method
    (Hessian ``G + diag(1/α²)``, always positive definite; the step is cut to stay inside
    ``α > 0`` and backtracked until φ decreases), stopped when the squared Newton decrement is
    below ``tol``. Newton needs 5-15 iterations from the start ``α_t = 1/√(n G_tt)`` (exact
    when all gradients are equal).

    ``φ`` has no minimiser when some ``α ≥ 0`` has ``Jᵀα = 0`` (a zero gradient, gradients that
    cancel out): there is no Nash solution. So α is first found for ``G + ρI`` with
    ``ρ = ridge · max_t G_tt``, which always has one, and Newton then continues on ``G`` itself
    from there. The ridge-free α is kept where it solves ``α_t (Gα)_t = 1`` better than the
    ridge's (to rounding, ``< 1e-12`` for a well-conditioned G); where no solution exists some
    ``α_t (Gα)_t − 1`` stays ≥ 1 (for ``Jᵀv = 0``, ``v ≥ 0``: ``Σ_t v_t (Gα)_t = 0``), so
    the documented finite fallback is the ridge's α: the α of a zero gradient is ``1/√ρ`` and
    contributes nothing to ``d = Jᵀα``, and ``‖Jᵀα‖² ≤ n`` always holds.
    """
    n = G.shape[0]
    dtype, device = G.dtype, G.device
    diag = G.diagonal()
    scale = float(diag.max().clamp_min(0))
    if scale <= 0:
        scale = 1.0
    rho = ridge * scale
    start = 1.0 / (n * diag.clamp_min(0) + rho).sqrt()
    alpha_ridge = _newton(G + rho * torch.eye(n, dtype=dtype, device=device), start, max_iter, tol)
    alpha = _newton(G, alpha_ridge, max_iter, tol)
    res, res_ridge = nash_residual(G, alpha), nash_residual(G, alpha_ridge)
    # ≥ 1 is the mark of a G without a Nash solution (see above): keep the ridge's α then.
    return torch.where((res < res_ridge) & (res < 0.5), alpha, alpha_ridge)


@register(
    "nash_mtl",
    paper="Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022 (arXiv:2202.01017)",
)
class NashMTL(GradientMethod):
    """Nash-MTL: ``d = Σ_t α_t g_t`` with ``G α = 1/α``, the Nash bargaining solution.

    Navon et al. 2022 (https://arxiv.org/abs/2202.01017): the update maximising
    ``Σ_t log(g_tᵀ d)`` in a ball satisfies ``α_t · g_tᵀ d = 1`` for every task, i.e.
    ``α_t (G α)_t = 1`` with ``G = J Jᵀ``. The paper approximates α with a sequence of convex
    problems (cvxpy); here the same fixed point is solved to machine precision by damped Newton's
    method on the Gramian, without cvxpy (see :func:`nash_weights`, which documents the finite
    fallback for a singular G). The direction does not depend on the scale of the gradients
    (``‖d‖ = √n`` before clipping).

    Args:
        max_norm: clip ``‖d‖`` to this value, as the paper's code clips the norm of the shared
            parameters' gradient (default 1.0, its default); 0 disables clipping. Clipping is
            applied here, to ``d``.
        update_weights_every: recompute α every this many calls and reuse the last α in between
            (default 1, every step; the paper uses larger values to save time). α is also
            recomputed when the set of tasks present changes.
        max_iter: iteration cap of Newton's method.

    The authors' released code divides ``G`` by ``s = ‖G‖_F`` before its convex solver, but
    its constraint ``−log(α_t s) − log((G/s)α)_t ≤ 0`` is ``α_t (Gα)_t ≥ 1`` in raw units and
    its objective is the raw one divided by ``s``: its α is the paper's α, which this method
    computes. (Version 0.1's ``normalize_gramian`` option, which multiplied α by ``√‖G‖_F``
    in the belief that it reproduced that code, is removed.)
    """

    #: Options of earlier versions that no longer exist, with the reason (the registry names it).
    removed_options = {
        "normalize_gramian": (
            "the authors' Frobenius normalisation of G leaves their α equal to the paper's α "
            "(their constraint α_i·s·((G/s)α)_i >= 1 is α_i(Gα)_i >= 1), which nash_mtl "
            "always computes; the option scaled α by √‖G‖_F instead - remove it"
        )
    }

    uses_gramian = True

    def __init__(
        self,
        num_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        max_iter: int = 100,
    ) -> None:
        super().__init__(num_tasks)
        self.max_norm = check_positive("max_norm", max_norm, allow_zero=True)
        for name, value in (("update_weights_every", update_weights_every), ("max_iter", max_iter)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.update_weights_every = update_weights_every
        self.max_iter = max_iter
        self._step = 0
        self._alpha: Tensor | None = None
        self._alpha_present: Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self._step = 0
        self._alpha = None
        self._alpha_present = None

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, max_norm={self.max_norm}, "
            f"update_weights_every={self.update_weights_every}"
        )

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        n = G.shape[0]
        mask = torch.ones(self.num_tasks, dtype=torch.bool) if present is None else present.cpu()
        reuse = (
            self._alpha is not None
            and self._step % self.update_weights_every != 0
            and self._alpha_present is not None
            and torch.equal(self._alpha_present, mask)
            and self._alpha.shape[0] == n
        )
        self._step += 1
        if reuse:
            assert self._alpha is not None
            alpha = self._alpha.to(G.device)
        else:
            # G α = 1/α with α = β / D is Ĝ β = 1/β for Ĝ = D⁻¹GD⁻¹ (unit diagonal), so the
            # spread of gradient norms leaves the numerics (zero gradients: D_t = 1).
            Gu, D = unit_form(G)
            alpha = nash_weights(Gu, max_iter=self.max_iter) / D
            self._alpha = alpha.detach()
            self._alpha_present = mask
        if self.max_norm > 0:
            # ‖d‖² = αᵀGα: the clipping factor comes from the Gramian too.
            norm = (alpha @ (G @ alpha)).clamp_min(0).sqrt()
            factor = torch.where(
                norm > self.max_norm, self.max_norm / norm.clamp_min(1e-300), torch.ones_like(norm)
            )
            alpha = alpha * factor
        return alpha
