"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao et al., NeurIPS 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.validation import is_int, is_number

from ..base import SAMPLING, GradientMethod, check_choice, check_positive
from ..registry import register
from ..solvers import project_simplex

__all__ = ["SDMGrad"]


@register(
    "sdmgrad",
    paper="Xiao, Ban & Ji, Direction-oriented Multi-objective Learning: Simple and Provable "
    "Stochastic Algorithms, NeurIPS 2023 (arXiv:2305.18409)",
)
class SDMGrad(GradientMethod):
    """SDMGrad: MGDA regularised towards the mean gradient, weights warm-started between steps.

    Xiao et al. 2023 (https://arxiv.org/abs/2305.18409): the weights solve
    ``min_{w ∈ Δ} ½ ‖Jᵀw + λ g_0‖²`` with ``g_0 = Jᵀw̃`` the target direction
    (``w̃ = 1/n``: the mean gradient), and ``d = Jᵀ(w + λ w̃) / (1 + λ)``. As in the authors'
    code the problem is solved approximately: ``n_iter`` steps of projected gradient descent
    with heavy-ball momentum (``lr``, ``momentum``; the velocity restarts every step) on
    ``Â = G / s²`` (``s`` the mean gradient norm), starting from the previous step's ``w``
    (a buffer, in ``state_dict``; :meth:`reset` restores ``1/T``). Absent tasks keep their
    entries; the others are projected onto the simplex.

    Double sampling (the paper's stochastic algorithm, ``sampling="independent"``, default):
    ``G`` is the cross-Gramian ``J_ξ J_ξ'ᵀ`` of two independent samples (``s²`` from its
    diagonal, negative entries counted as 0) and the direction uses a third, ``J_ζ``; the
    Trainer splits each batch into three disjoint parts for it
    (:meth:`~taskbalance.balancing.Balancer.backward_independent`; LibMTL draws three batches
    a step instead). ``sampling="single"``: all three are the one batch (``G = J Jᵀ``; what
    ``Balancer.backward``, the distributed step and the Lightning module take).
    ``aggregate(J)`` and ``weights(G)`` (one sample given) always use the one-batch rule;
    :meth:`aggregate_independent` takes ``[J₁, J₂, J₃]``. The authors add ``1e-8`` to ``s²``;
    here a zero Gramian is handled explicitly instead, so the weights do not depend on the
    gradient scale.

    Args:
        lamda: ``λ >= 0``, pull towards the mean gradient (authors' experiments: 0.3).
        n_iter: inner steps per training step (authors: 20).
        lr: inner step size (authors' default 10; LibMTL uses 5).
        momentum: inner heavy-ball momentum in ``[0, 1)`` (authors: 0.5).
        sampling: ``"independent"`` (three independent samples a step) or ``"single"``.
    """

    simplex_weights: Tensor
    uses_gramian = True

    def __init__(
        self,
        num_tasks: int,
        lamda: float = 0.3,
        n_iter: int = 20,
        lr: float = 10.0,
        momentum: float = 0.5,
        sampling: str = "independent",
    ) -> None:
        super().__init__(num_tasks)
        self.sampling = check_choice("sampling", sampling, SAMPLING)
        self.independent_batches = 3 if sampling == "independent" else 1
        self.lamda = check_positive("lamda", lamda, allow_zero=True)
        if not is_int(n_iter) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
        self.n_iter = n_iter
        self.lr = check_positive("lr", lr)
        ok = is_number(momentum)
        if not ok or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.register_buffer(
            "simplex_weights", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        )

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, lamda={self.lamda}, n_iter={self.n_iter}, "
            f"lr={self.lr}, momentum={self.momentum}, sampling={self.sampling!r}"
        )

    def reset(self) -> None:
        super().reset()
        self.simplex_weights.fill_(1.0 / self.num_tasks)

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        n = G.shape[0]
        s2 = G.diagonal().clamp_min(0).sqrt().mean().square()
        A = torch.where(s2 > 0, G / torch.where(s2 > 0, s2, 1.0), 0.0)
        w_all = self.simplex_weights.to(device=G.device, dtype=torch.float64)
        idx = None if present is None else present.to(G.device).nonzero().flatten()
        w = w_all if idx is None else w_all[idx]
        target = torch.full((n,), 1.0 / n, dtype=torch.float64, device=G.device)
        velocity = torch.zeros_like(w)
        for k in range(self.n_iter):
            grad = A @ (w + self.lamda * target)
            velocity = grad if k == 0 else self.momentum * velocity + grad
            w = project_simplex(w - self.lr * velocity)
        w_all = w if idx is None else w_all.index_put((idx,), w)
        self.simplex_weights = w_all.to(self.simplex_weights.device)
        return (w + self.lamda * target) / (1.0 + self.lamda)
