"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import GradientMethod, check_positive
from ..registry import register
from ..solvers import unit_form

__all__ = ["NashMTL", "nash_weights"]


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
    cancel out): there is no Nash solution. The documented finite fallback: a ridge ``ρ I`` with
    ``ρ = ridge · max_t G_tt`` is always added to ``G`` (negligible for a well-conditioned
    ``G``), so α stays finite (the α of a zero gradient becomes ``1/√ρ`` and contributes
    nothing to ``d = Jᵀα``), and ``‖Jᵀα‖² ≤ n`` always holds.
    """
    n = G.shape[0]
    dtype, device = G.dtype, G.device
    diag = G.diagonal()
    scale = float(diag.max().clamp_min(0))
    if scale <= 0:
        scale = 1.0
    rho = ridge * scale
    A = G + rho * torch.eye(n, dtype=dtype, device=device)
    alpha = 1.0 / (n * diag.clamp_min(0) + rho).sqrt()

    def phi(a: Tensor) -> Tensor:
        return 0.5 * (a @ (A @ a)) - a.log().sum()

    f = phi(alpha)
    for _ in range(max_iter):
        grad = A @ alpha - 1.0 / alpha
        H = A + torch.diag(1.0 / alpha**2)
        step = -torch.linalg.solve(H, grad)
        decrement = float(-(grad @ step))
        if decrement <= tol:
            break
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
        normalize_gramian: ``False`` (default) follows the paper's equation, ``‖d‖ = √n``
            whatever the gradients' scale. ``True`` follows the authors' released code, which
            divides ``G`` by its Frobenius norm before solving: α grows by ``√‖G‖_F``, so
            ``‖d‖ = √(n ‖G‖_F)`` follows the scale of the gradients (before clipping) and
            plain SGD slows down as gradients shrink.
    """

    uses_gramian = True

    def __init__(
        self,
        num_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        max_iter: int = 100,
        normalize_gramian: bool = False,
    ) -> None:
        super().__init__(num_tasks)
        if not isinstance(normalize_gramian, bool):
            raise ValueError(f"normalize_gramian must be True or False, got {normalize_gramian!r}")
        self.normalize_gramian = normalize_gramian
        self.max_norm = check_positive("max_norm", max_norm, allow_zero=True)
        for name, value in (("update_weights_every", update_weights_every), ("max_iter", max_iter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
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
            if self.normalize_gramian:
                # Solving for G/s gives √s·α (s = ‖G‖_F), as the authors' code does.
                alpha = alpha * G.norm().sqrt()
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
