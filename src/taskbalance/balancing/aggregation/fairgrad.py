"""FairGrad: α-fair resource allocation between tasks (Ban & Ji, ICML 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.validation import is_int

from ..base import GradientMethod, check_positive
from ..registry import register

__all__ = ["FairGrad", "fairgrad_weights"]

#: Step lengths tried at once by the line search (1, 1/2, ..., 2^-30).
_STEPS = 2.0 ** -torch.arange(31, dtype=torch.float64)
#: Newton steps between two convergence checks (each reads one number on the Gramian's device;
#: the Balancer's Gramian is on the host, where this costs nothing). Newton needs 4-6 steps.
_CHECK_EVERY = 2
#: Newton stops early at this backward error (rounding level; quadratic convergence makes
#: the last steps cheap); it raises only above ``tol`` after ``max_iter`` steps.
_ROUNDING = 1e-13


def _unit_system(G: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(Ĝ + ridge·I, D̃, live, M)``: the unit-diagonal Gramian of the non-zero rows (projected
    onto the PSD cone), the norms relative to the largest ``M``, and which rows are non-zero."""
    n = G.shape[0]
    dtype, device = torch.float64, G.device
    G = G.to(dtype)
    D = G.diagonal().clamp_min(0).sqrt()
    M = D.max()
    live = D > 1e-150 * M.clamp_min(1e-300)  # rows that are not zero (relative to the largest)
    Ds = torch.where(live, D, 1.0)
    Gu = G / (Ds[:, None] * Ds[None, :])
    Gu = torch.where(live[:, None] & live[None, :], Gu, torch.eye(n, dtype=dtype, device=device))
    # A Gramian of float32 gradients can be slightly indefinite (rounding of the products):
    # project it onto the PSD cone so the problem stays convex, then add the ridge.
    evals, evecs = torch.linalg.eigh(0.5 * (Gu + Gu.T))
    Gu = (evecs * evals.clamp_min(0)) @ evecs.T
    Gu = 0.5 * (Gu + Gu.T) + ridge * torch.eye(n, dtype=dtype, device=device)
    Dt = torch.where(live, Ds / torch.where(M > 0, M, 1.0), 1.0)
    return Gu, Dt, live, M


def fairgrad_weights(
    G: Tensor, alpha: float, *, max_iter: int = 64, ridge: float = 1e-10, tol: float = 1e-8
) -> Tensor:
    """Weights ``w > 0`` with ``G w = w^{-1/α}`` (element-wise power), from a float64 Gramian.

    Ban & Ji 2024, Eq. 4 (https://arxiv.org/abs/2402.15638). The system is the stationarity
    condition of the strictly convex ``φ(w) = ½ wᵀGw − Σ_t h(w_t)`` with ``h' (w) = w^{-1/α}``,
    solved by damped Newton's method (Hessian ``G + diag(w^{-1/α−1}/α)``, positive definite).
    To keep it well scaled it is solved for ``v`` in the unit-diagonal form: with
    ``G = D Ĝ D`` (``D`` the gradient norms, ``M = max D``, ``D̃ = D/M``) and
    ``w = M^{-2α/(1+α)} v / D̃``, the system becomes ``Ĝ v = D̃^{(1−α)/α} ⊙ v^{-1/α}``.

    No synchronisation inside an iteration: convergence is checked every 2 Newton steps
    (up to ``max_iter``); each step has a line search that
    evaluates 31 step lengths at once and keeps the feasible one (``v > 0``) of smallest φ
    (near the solution, where φ stalls at rounding level, of smallest ``‖Ĝv − c v^{-1/α}‖``).
    If after ``max_iter`` steps the residual is still above ``tol`` (relative to the size of the
    terms ``|Ĝ| v`` and ``c v^{-1/α}``, a backward error) the call raises
    ``RuntimeError`` rather than return unconverged weights.

    Degenerate cases (documented, finite): a zero gradient has no finite weight (its utility
    can never be met); it gets weight 0, which does not change ``d = Jᵀw``. Gradients that can
    cancel out (``Jᵀu = 0`` for some ``u ≥ 0``, e.g. opposite rows) leave the system without a
    solution; a ridge ``ridge·I`` on ``Ĝ`` (negligible otherwise) keeps ``w`` finite, as for
    Nash-MTL. ``Ĝ`` is first projected onto the PSD cone (negative eigenvalues from rounding,
    e.g. of float32 gradient products, set to 0) so the problem stays convex. Known limit: for
    α ≠ 1 the rescaled system carries ``D̃^{(1−α)/α}``, so gradient norms spread by more than
    ~1e15 (e.g. 1e-11 next to 1e11 with α = 5) can exceed ``max_iter``; the call then raises.
    """
    Gu, Dt, live, M = _unit_system(G, ridge)
    c = Dt.pow((1.0 - alpha) / alpha)
    inv_a = 1.0 / alpha
    v = c.pow(alpha / (1.0 + alpha))  # exact for a diagonal Ĝ = I
    steps = _STEPS.to(G.device)

    def phi(V: Tensor) -> Tensor:  # the convex objective per row of V ([k, n], entries > 0)
        h = V.log() if alpha == 1.0 else V.pow(1.0 - inv_a) / (1.0 - inv_a)
        return 0.5 * torch.einsum("ki,ij,kj->k", V, Gu, V) - (c * h).sum(-1)

    def merit(V: Tensor) -> Tensor:  # ‖F(V)‖² per row of V
        F = V @ Gu - c * V.pow(-inv_a)
        return (F * F).sum(-1)

    def backward_error(v: Tensor) -> Tensor:
        # The residual relative to the size of the terms it is the difference of.
        residual = Gu @ v - c * v.pow(-inv_a)
        return (residual.abs() / (Gu.abs() @ v + c * v.pow(-inv_a))).max()

    for it in range(max_iter):
        if it % _CHECK_EVERY == 0 and it > 0 and bool(backward_error(v) <= _ROUNDING):
            break
        grad = Gu @ v - c * v.pow(-inv_a)
        H = Gu + torch.diag(c * inv_a * v.pow(-inv_a - 1.0))
        delta = -torch.linalg.solve(H, grad)
        cand = v[None, :] + steps[:, None] * delta[None, :]
        feasible = (cand > 0).all(-1)
        safe = torch.where(feasible[:, None], cand, v[None, :])
        # Damped Newton on φ (global convergence); once φ no longer decreases measurably (near
        # the solution, at rounding level) the step that most reduces ‖F‖ is taken instead.
        f_now = phi(v[None, :])[0]
        f = torch.where(feasible, phi(safe), torch.inf)
        f = torch.where(torch.isnan(f), torch.inf, f)
        m = torch.where(feasible, merit(safe), torch.inf)
        m = torch.where(torch.isnan(m), torch.inf, m)
        by_phi = f.argmin()
        by_merit = m.argmin()
        use_phi = f[by_phi] < f_now - 1e-12 * f_now.abs()
        use_merit = ~use_phi & (m[by_merit] < (grad * grad).sum())
        v = torch.where(use_phi, safe[by_phi], torch.where(use_merit, safe[by_merit], v))
    rel = backward_error(v)
    if not bool(rel <= tol):
        raise RuntimeError(
            f"FairGrad's solver did not converge in {max_iter} Newton steps (relative residual "
            f"{float(rel):.2e} > tol={tol}); raise max_iter or check the gradients for NaN"
        )
    scale = torch.where(M > 0, M, 1.0).pow(-2.0 * alpha / (1.0 + alpha))
    return torch.where(live, scale * v / Dt, 0.0)


@register(
    "fairgrad",
    paper="Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024 (arXiv:2402.15638)",
)
class FairGrad(GradientMethod):
    """FairGrad: the update that maximises the sum of α-fair utilities of the task improvements.

    Ban & Ji 2024 (https://arxiv.org/abs/2402.15638): each task's utility of the direction
    ``d`` is ``(g_tᵀd)^{1−α}/(1−α)`` (``log g_tᵀd`` for α = 1); the maximiser over a ball is
    ``d = Σ_t w_t g_t`` with ``w`` solving ``G w = w^{-1/α}`` (Eq. 4, ``G = J Jᵀ``), used
    unnormalised as in the authors' code. α = 1 is proportional fairness (the Nash-MTL
    system), larger α moves towards max-min fairness, α → 0 towards equal weighting. Solved on
    the ``n × n`` Gramian in torch (see :func:`fairgrad_weights`); the authors use scipy's
    ``least_squares`` on the host.

    Args:
        alpha: fairness ``α > 0`` (authors' default 1.0; they report 0.5-2 per benchmark).
        max_iter: Newton steps of the solver.
        tol: relative residual above which the solver raises instead of returning.
    """

    uses_gramian = True

    def __init__(
        self, num_tasks: int, alpha: float = 1.0, max_iter: int = 64, tol: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        self.alpha = check_positive("alpha", alpha)
        if not is_int(max_iter) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.max_iter = max_iter
        self.tol = check_positive("tol", tol)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, alpha={self.alpha}"

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        return fairgrad_weights(G, self.alpha, max_iter=self.max_iter, tol=self.tol)
