"""ExcessMTL: task weights from estimated excess risks (He et al., ICML 2024)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._per_parameter_state import PerParameterState
from ..base import GradientMethod, check_positive
from ..registry import register
from ..solvers import chunk_columns, combine

__all__ = ["ExcessMTL"]

#: AdaGrad's ε inside the square root (authors' code).
_ADAGRAD_EPS = 1e-7


@register(
    "excess_mtl",
    paper="He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024 (arXiv:2402.02009)",
)
class ExcessMTL(PerParameterState, GradientMethod):
    """ExcessMTL: weight each task by how far it is from its best achievable loss.

    He et al. 2024 (https://arxiv.org/abs/2402.02009). A task's excess risk is estimated by a
    second-order expansion, ``E_t ≈ g_tᵀ H_t⁻¹ g_t`` with a diagonal AdaGrad estimate
    ``H_t = diag(√(Σ_k g_t,k² + ε))`` accumulated over the steps (Eqs. 6-7). The first step's
    estimate is each task's baseline ``E_t⁰`` (the scale processing of Sec. 3.2, as in the
    authors' code; the paper's appendix suggests averaging it over warm-up epochs); afterwards the
    weights take an exponentiated-gradient step ``w_t ← w_t exp(η E_t / E_t⁰)`` (Eq. 9) and are
    renormalised to sum to ``T`` (the authors' code; the paper's simplex weights times ``T``,
    i.e. equal weighting's scale). ``d = Σ_t w_t g_t``; the weights start at 1.

    State (in ``state_dict``): the ``[T, P]`` float64 squared-gradient sums (as large as J, in
    float64 so squares of float32 gradients never overflow), the baselines and the log-weights.
    Works in param mode only (the state is per shared parameter). A task whose gradient is zero
    at the first step gets its baseline at its first non-zero gradient (no division by 0); an
    absent task keeps its state and weight.

    Args:
        robust_step_size: ``η > 0`` (authors' default 1e-2).
    """

    _per_parameter_buffers = ("sq_grad_sum",)
    sq_grad_sum: Tensor
    baseline: Tensor
    log_weights: Tensor

    def __init__(self, num_tasks: int, robust_step_size: float = 1e-2) -> None:
        super().__init__(num_tasks)
        self.robust_step_size = check_positive("robust_step_size", robust_step_size)
        self.register_buffer("sq_grad_sum", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("baseline", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("log_weights", torch.zeros(num_tasks, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, robust_step_size={self.robust_step_size}"

    def reset(self) -> None:
        super().reset()
        self.sq_grad_sum = torch.zeros(0, dtype=torch.float64, device=self.baseline.device)
        self.baseline.zero_()
        self.log_weights.zero_()

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        T = self.num_tasks
        dev = J.device
        if self._check_width("sq_grad_sum", self.sq_grad_sum, J):
            self.sq_grad_sum = torch.zeros(T, J.shape[1], dtype=torch.float64, device=dev)
        for name in ("sq_grad_sum", "baseline", "log_weights"):
            if getattr(self, name).device != dev:
                setattr(self, name, getattr(self, name).to(dev))
        rows = None if present is None else present.to(dev).nonzero().flatten()
        excess = _excess_risks(J.detach(), self.sq_grad_sum, rows)
        idx = torch.arange(T, device=dev) if rows is None else rows
        base = self.baseline.index_select(0, idx)
        has_base = base > 0
        ratio = torch.where(has_base, excess / torch.where(has_base, base, 1.0), 0.0)
        self.baseline.index_copy_(0, idx, torch.where(has_base, base, excess))
        logw = self.log_weights.index_select(0, idx) + self.robust_step_size * ratio
        self.log_weights.index_copy_(0, idx, logw)
        # Renormalise to Σ w = T in log space (exp(η·ratio) may overflow otherwise).
        self.log_weights.sub_(torch.logsumexp(self.log_weights, 0) - math.log(T))
        w = self.log_weights.index_select(0, idx).exp()
        self.last_weights = w.to(dtype=J.dtype)
        return combine(w, J)


def _excess_risks(J: Tensor, S: Tensor, rows: Tensor | None) -> Tensor:
    """``E_t = Σ_k g_tk² / √(S_tk + ε)`` after adding ``g_tk²`` to the AdaGrad sums ``S``.

    ``S``: the float64 ``[T, P]`` state, updated in place (only its ``rows`` when given: the
    tasks present, one per row of ``J``). Column chunk by chunk in two reused float64 buffers,
    so no ``[T, P]`` temporaries; the squares of float32 gradients are exact in float64.
    """
    n, P = J.shape
    c = max(1, min(chunk_columns(J.device), P))
    sq = torch.empty(n, c, dtype=torch.float64, device=J.device)
    h = torch.empty_like(sq)
    excess = torch.zeros(n, dtype=torch.float64, device=J.device)
    for start in range(0, P, c):
        Jc = J[:, start : start + c]
        w = Jc.shape[1]
        g2 = sq[:, :w].copy_(Jc)
        g2.mul_(g2)
        if rows is None:
            S[:, start : start + w].add_(g2)
            Sc = S[:, start : start + w]
        else:
            Sc = S[rows, start : start + w].add_(g2)
            S[rows, start : start + w] = Sc
        excess += g2.div_(torch.add(Sc, _ADAGRAD_EPS, out=h[:, :w]).sqrt_()).sum(1)
    return excess
