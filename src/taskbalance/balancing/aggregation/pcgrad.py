"""PCGrad: project each task gradient off the gradients it conflicts with (Yu et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import GradientMethod, make_generator
from ..registry import register
from ..solvers import normalized, random_orders

__all__ = ["PCGrad"]


@register(
    "pcgrad",
    paper="Yu et al., Gradient surgery for multi-task learning, NeurIPS 2020, "
    "https://arxiv.org/abs/2001.06782",
)
class PCGrad(GradientMethod):
    """PCGrad: ``d = Σ_i g_i^PC``, each ``g_i`` projected off every ``g_j`` it conflicts with.

    For each task ``i``, the other tasks ``j`` are visited in a random order; whenever the
    current ``g_i^PC`` conflicts with ``g_j`` (``g_i^PC·g_j < 0``) it is projected onto the
    normal plane of ``g_j``: ``g_i^PC ← g_i^PC − (g_i^PC·g_j / ‖g_j‖²) g_j``.

    Computed on the Gramian: ``g_i^PC = Σ_j c_ij g_j`` with coefficients ``c`` (``n x n``,
    starting at the identity) whose dot products are updated in the ``n x n`` space, then
    ``d = (Σ_i c_i)ᵀ J`` is materialised once, ``O(n²P)``. ``last_weights`` are the column sums
    of ``c`` (``d = Σ_j w_j g_j``). A zero ``g_j`` is never projected off.

    Args:
        seed: an int, a ``torch.Generator`` or ``None`` (the global CPU RNG) for the random
            orders (``n²`` numbers per step, drawn on the generator's device).

    Paper: https://arxiv.org/abs/2001.06782
    """

    uses_gramian = True

    def __init__(self, num_tasks: int, seed: int | torch.Generator | None = None) -> None:
        super().__init__(num_tasks)
        self.seed = seed
        self.generator = make_generator(seed)

    def reset(self) -> None:
        super().reset()
        self.generator = make_generator(self.seed)

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        G = normalized(G)
        n = G.shape[0]
        C = torch.eye(n, dtype=G.dtype, device=G.device)
        if n > 1:
            orders = random_orders(n, self.generator, G.device)
            rows = torch.arange(n, device=G.device)
            sq = G.diagonal()
            for k in range(n - 1):
                j = orders[:, k]  # task j_i visited by every task i at step k
                dots = (C * G[:, j].T).sum(dim=1)  # g_i^PC · g_{j_i}
                gjj = sq[j]
                conflict = (dots < 0) & (gjj > 0)
                coef = torch.where(conflict, dots / torch.where(gjj > 0, gjj, 1.0), 0.0)
                C[rows, j] = C[rows, j] - coef
        return C.sum(dim=0)
