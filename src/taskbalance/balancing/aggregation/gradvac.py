"""GradVac: gradient vaccine (Wang et al., ICLR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.validation import is_number

from ..base import GradientMethod, make_generator
from ..registry import register
from ..solvers import normalized, random_orders

__all__ = ["GradVac"]


@register(
    "gradvac",
    paper="Wang et al., Gradient vaccine: investigating and improving multi-task optimization "
    "in massively multilingual models, ICLR 2021, https://arxiv.org/abs/2010.05874",
)
class GradVac(GradientMethod):
    """GradVac: pull each ``g_i`` towards every ``g_j`` whose cosine is below an EMA target.

    For each task ``i`` and each other task ``j`` in a random order, with ``g_i'`` the already
    adapted ``g_i`` and ``φ = cos(g_i', g_j)``: if ``φ < φ̂_ij``,

    ``g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1−φ²) − φ √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²)) · g_j``

    (which makes ``cos(g_i', g_j) = φ̂_ij``); then ``φ̂_ij ← (1−β) φ̂_ij + β φ``. The update is
    ``d = Σ_i g_i'``. The targets ``φ̂`` start at 0 (so the first steps act like PCGrad) and are
    kept in the buffer ``targets`` (``[T, T]``, saved in ``state_dict``; :meth:`reset` zeroes
    them); when some tasks are absent only their pairs are skipped.

    Computed on the Gramian like PCGrad (``g_i' = Σ_j c_ij g_j``, dot products updated in the
    ``n x n`` space, ``d`` materialised once); ``last_weights`` are the column sums of ``c``.
    The whole shared gradient forms one group (the paper also applies it per layer).
    Degenerate cases: a pair with a zero gradient has no cosine and is skipped (no adaptation,
    no EMA update); ``√(1−φ̂²)`` is bounded below by ``1e-12``.

    Args:
        beta: EMA rate ``β`` in ``(0, 1]`` (paper: 0.01).
        seed: an int, a ``torch.Generator`` or ``None`` (the global CPU RNG) for the orders.

    Paper: https://arxiv.org/abs/2010.05874
    """

    targets: Tensor
    uses_gramian = True

    def __init__(
        self, num_tasks: int, beta: float = 0.01, seed: int | torch.Generator | None = None
    ) -> None:
        super().__init__(num_tasks)
        ok = is_number(beta) and 0 < beta <= 1
        if not ok:
            raise ValueError(f"beta must be a number in (0, 1], got {beta!r}")
        self.beta = float(beta)
        self.seed = seed
        self.generator = make_generator(seed)
        self.register_buffer("targets", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def reset(self) -> None:
        super().reset()
        self.generator = make_generator(self.seed)
        self.targets.zero_()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, beta={self.beta}"

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        G = normalized(G)
        n = G.shape[0]
        dev = G.device
        if self.targets.device != dev:
            self.targets = self.targets.to(dev)
        if present is None:
            idx = torch.arange(n, device=dev)
        else:
            idx = present.to(dev).nonzero().flatten()
        targets = self.targets[idx[:, None], idx[None, :]].to(torch.float64)
        C = torch.eye(n, dtype=G.dtype, device=dev)
        if n > 1:
            orders = random_orders(n, self.generator, dev)
            rows = torch.arange(n, device=dev)
            norm_j_all = G.diagonal().clamp_min(0).sqrt()
            beta = self.beta
            for k in range(n - 1):
                j = orders[:, k]
                CG = C @ G
                dots = CG[rows, j]  # g_i' · g_j
                norm_i = (CG * C).sum(dim=1).clamp_min(0).sqrt()  # ‖g_i'‖
                norm_j = norm_j_all[j]
                valid = (norm_i > 0) & (norm_j > 0)
                denom = torch.where(valid, norm_i * norm_j, 1.0)
                phi = torch.where(valid, dots / denom, 0.0).clamp(-1.0, 1.0)
                target = targets[rows, j]
                sin_phi = ((1 - phi) * (1 + phi)).clamp_min(0).sqrt()
                sin_target = ((1 - target) * (1 + target)).clamp_min(0).sqrt().clamp_min(1e-12)
                a = (
                    norm_i
                    * (target * sin_phi - phi * sin_target)
                    / (torch.where(valid, norm_j, 1.0) * sin_target)
                )
                adapt = valid & (phi < target)
                C[rows, j] = C[rows, j] + torch.where(adapt, a, 0.0)
                targets[rows, j] = torch.where(valid, (1 - beta) * target + beta * phi, target)
        self.targets[idx[:, None], idx[None, :]] = targets.to(self.targets.dtype)
        return C.sum(dim=0)
