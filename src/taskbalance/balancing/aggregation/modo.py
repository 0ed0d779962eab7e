"""MoDo: multi-objective gradient with double sampling (Chen et al., NeurIPS 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import SAMPLING, GradientMethod, check_choice, check_positive
from ..registry import register
from ..solvers import project_simplex

__all__ = ["MoDo"]


@register(
    "modo",
    paper="Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning: "
    "Optimization, Generalization and Conflict-Avoidance, NeurIPS 2023 (arXiv:2305.20057)",
)
class MoDo(GradientMethod):
    """MoDo: one projected-gradient step on the MGDA weights per training step.

    Chen et al. 2023 (https://arxiv.org/abs/2305.20057), Eq. 2.9: the weights ``λ`` on the
    simplex are kept between steps and updated once per step,
    ``λ ← Π_Δ(λ − γ (G λ + ρ λ))`` (``G = J Jᵀ``, ``Π_Δ`` the Euclidean projection onto the
    simplex), then ``d = Σ_t λ_t g_t``. Starts from ``λ = 1/T``; ``λ`` is a buffer (it
    travels in ``state_dict``; :meth:`reset` restores it). In a step where some tasks are
    absent only their entries are left unchanged and the others are projected onto the simplex.

    Double sampling (the paper's Algorithm 1, ``sampling="independent"``, default): ``G`` is
    the cross-Gramian ``J₁ J₂ᵀ`` of two independent samples (an unbiased estimate of the true
    Gramian) and ``d = Σ_t λ_t J₃[t]`` uses a third; the Trainer splits each batch into three
    disjoint parts for it (:meth:`~taskbalance.balancing.Balancer.backward_independent`;
    LibMTL draws three batches a step instead). ``sampling="single"``: all three are the one
    batch (``G = J Jᵀ``, a biased estimate; what ``Balancer.backward``, the distributed step
    and the Lightning module take). ``aggregate(J)`` and ``weights(G)`` (one sample given)
    always use the one-batch rule; :meth:`aggregate_independent` takes ``[J₁, J₂, J₃]``.
    ``G`` is not normalised, so ``γ`` acts on the raw gradient scale, as in the paper.

    Args:
        gamma: step size ``γ > 0`` of the weights (LibMTL default 1e-3).
        rho: ``ℓ2`` regularisation ``ρ >= 0`` of the weights (LibMTL default 0.1).
        sampling: ``"independent"`` (three independent samples a step) or ``"single"``.
    """

    lambdas: Tensor
    uses_gramian = True

    def __init__(
        self, num_tasks: int, gamma: float = 1e-3, rho: float = 0.1, sampling: str = "independent"
    ) -> None:
        super().__init__(num_tasks)
        self.gamma = check_positive("gamma", gamma)
        self.rho = check_positive("rho", rho, allow_zero=True)
        self.sampling = check_choice("sampling", sampling, SAMPLING)
        self.independent_batches = 3 if sampling == "independent" else 1
        self.register_buffer(
            "lambdas", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        )

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, gamma={self.gamma}, rho={self.rho}, "
            f"sampling={self.sampling!r}"
        )

    def reset(self) -> None:
        super().reset()
        self.lambdas.fill_(1.0 / self.num_tasks)

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        lam_all = self.lambdas.to(device=G.device, dtype=torch.float64)
        idx = None if present is None else present.to(G.device).nonzero().flatten()
        lam = lam_all if idx is None else lam_all[idx]
        lam = project_simplex(lam - self.gamma * (G @ lam + self.rho * lam))
        if idx is None:
            lam_all = lam
        else:
            lam_all = lam_all.index_put((idx,), lam)
        self.lambdas = lam_all.to(self.lambdas.device)
        return lam
