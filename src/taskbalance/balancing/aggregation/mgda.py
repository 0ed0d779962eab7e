"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import GradientMethod, check_choice
from ..registry import register
from ..solvers import min_norm_weights

__all__ = ["MGDA"]

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
SCALES = ("none", "num_tasks")


@register(
    "mgda",
    paper="Sener & Koltun, Multi-task learning as multi-objective optimization, NeurIPS 2018, "
    "https://arxiv.org/abs/1810.04650",
)
class MGDA(GradientMethod):
    """MGDA: ``d = Σ_t w_t g_t`` with ``w`` the exact min-norm point of the hull of the ``g_t``.

    ``w = argmin_{w ≥ 0, Σw = 1} ‖Σ_t w_t ĝ_t‖²``, solved exactly on the Gramian of the
    (optionally normalised) rows ``ĝ_t`` by :func:`~taskbalance.balancing.solvers.min_norm_weights`
    (an equivalent non-negative least squares problem, its answer checked against the KKT
    conditions, with exact enumeration / Wolfe as the fallback; the paper uses Frank-Wolfe, an
    approximation). ``d`` is a common descent direction of all
    tasks, and ``d = 0`` exactly when the point is Pareto-stationary (e.g. a task's gradient is
    zero, or two gradients are opposite).

    Args:
        normalization: how rows are normalised *to find the weights* (the weights are then
            applied to the raw gradients, as in the authors' code): ``"none"`` (default, the
            paper's algorithm), ``"l2"`` (``g_t/‖g_t‖``), ``"loss"`` (``g_t/L_t``) or
            ``"loss+"`` (``g_t/(L_t·‖g_t‖)``). The loss variants need the task losses
            (``aggregate(J, losses)``; the Balancer passes them) and assume positive losses:
            ``L_t`` is clamped to at least ``1e-12·max_t L_t``. A zero row stays zero.
        scale: ``"none"`` (default): ``d`` itself, whose weights sum to 1 as in the paper;
            ``"num_tasks"``: ``n·d``, weights summing to the number of tasks like equal
            weighting (keeps the learning rate of an equal-weighting baseline comparable).

    MGDA-UB (the paper's efficient upper bound) is this method in rep mode:
    ``Balancer(method, shared, mode="rep")`` with the shared features.

    Paper: https://arxiv.org/abs/1810.04650
    """

    uses_gramian = True

    def __init__(self, num_tasks: int, normalization: str = "none", scale: str = "none") -> None:
        super().__init__(num_tasks)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.scale = check_choice("scale", scale, SCALES)
        # Instance attribute: the Balancer passes the losses only to methods that need them.
        self.needs_losses = normalization in ("loss", "loss+")

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        scale = None
        if self.normalization in ("l2", "loss+"):
            norms = G.diagonal().clamp_min(0).sqrt()
            scale = torch.where(norms > 0, norms, torch.ones_like(norms))
        if self.normalization in ("loss", "loss+"):
            if losses is None:
                raise ValueError(
                    f"mgda with normalization={self.normalization!r} needs the task losses: "
                    "call aggregate(J, losses)"
                )
            L = losses.detach().to(device=G.device, dtype=G.dtype)
            L = L.clamp_min(1e-12 * L.abs().amax().clamp_min(torch.finfo(G.dtype).tiny))
            scale = L if scale is None else scale * L
        if scale is not None:
            G = G / torch.outer(scale, scale)
        w = min_norm_weights(G)
        if self.scale == "num_tasks":
            w = w * G.shape[0]
        return w
