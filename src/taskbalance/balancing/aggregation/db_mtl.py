"""DB-MTL: dual balancing of loss scales and gradient magnitudes (Lin et al., 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from taskbalance.validation import is_number

from .._per_parameter_state import PerParameterState, device_row_norms
from ..base import GradientMethod, check_positive
from ..registry import register
from ..solvers import combine

__all__ = ["DBMTL"]


@register(
    "db_mtl",
    paper="Lin et al., Dual-Balancing for Multi-Task Learning, 2023 (arXiv:2308.12029)",
)
class DBMTL(PerParameterState, GradientMethod):
    """DB-MTL: balance the log-losses' gradients to the magnitude of the largest one.

    Lin et al. 2023 (https://arxiv.org/abs/2308.12029):

    * loss-scale balancing: every task's loss is replaced by ``log(L_t + ε)``
      (:meth:`transform_losses`; the Balancer differentiates the transformed losses), so
      ``g_t = ∇L_t / (L_t + ε)`` is invariant to the scale of the loss;
    * gradient-magnitude balancing: an exponential moving average
      ``ĝ_t ← β_k ĝ_t + (1 − β_k) g_t`` with ``β_k = β / k^σ`` (k the task's step count; the
      average starts at 0, no bias correction, as in the authors' code) and the update
      ``d = Σ_t α_t ĝ_t`` with ``α_t = max_s ‖ĝ_s‖ / ‖ĝ_t‖``: every task's averaged gradient
      rescaled to the largest norm.

    ``last_weights`` are the ``α_t`` (they weight the averaged gradients ``ĝ_t``, not the
    current ``g_t``). A zero ``ĝ_t`` gets ``α_t = 0`` (the authors' code divides by
    ``‖ĝ_t‖ + 1e-8``, which makes the result depend on the gradient scale). State: the
    ``[T, P]`` averages (J's dtype) and the step counts, in ``state_dict``. Param mode only
    (LibMTL also refuses rep mode). Losses must be non-negative. Absent tasks keep their
    averages and do not contribute. The average acts as momentum on top of the optimizer's:
    LibMTL (the authors' library) trains with Adam at lr 1e-4; at 1e-3 on ``multidigits`` this
    method stays at chance unless ``beta=0`` (measured in the README).

    Args:
        beta: ``β`` in ``[0, 1)`` (authors' default 0.9).
        beta_sigma: decay ``σ >= 0`` of ``β_k`` (authors' default 0: a constant β).
        eps: ``ε > 0`` inside the logarithm (authors' code: 1e-8).
    """

    loss_sign = "non-negative"  # the losses go through log(L + eps)

    _per_parameter_buffers = ("grad_ema",)
    grad_ema: Tensor
    steps: Tensor

    def __init__(
        self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        ok = is_number(beta)
        if not ok or not 0 <= beta < 1:
            raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self.beta_sigma = check_positive("beta_sigma", beta_sigma, allow_zero=True)
        self.eps = check_positive("eps", eps)
        self.register_buffer("grad_ema", torch.zeros(0))
        self.register_buffer("steps", torch.zeros(num_tasks, dtype=torch.float64))

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, beta={self.beta}, beta_sigma={self.beta_sigma}, "
            f"eps={self.eps}"
        )

    def reset(self) -> None:
        super().reset()
        self.grad_ema = torch.zeros(0, device=self.steps.device)
        self.steps.zero_()

    def transform_losses(self, losses: Tensor) -> Tensor:
        return (losses + self.eps).log()

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        T = self.num_tasks
        dev = J.device
        if self._check_width("grad_ema", self.grad_ema, J):
            self.grad_ema = torch.zeros(T, J.shape[1], dtype=J.dtype, device=dev)
        if self.grad_ema.device != dev or self.grad_ema.dtype != J.dtype:
            self.grad_ema = self.grad_ema.to(device=dev, dtype=J.dtype)
        if self.steps.device != dev:
            self.steps = self.steps.to(dev)
        idx = (
            torch.arange(T, device=dev) if present is None else present.to(dev).nonzero().flatten()
        )
        k = self.steps.index_select(0, idx) + 1
        self.steps.index_copy_(0, idx, k)
        beta_k = (self.beta / k.pow(self.beta_sigma)).to(J.dtype)[:, None]
        g = J.detach()
        ema = g + beta_k * (self.grad_ema.index_select(0, idx) - g)
        self.grad_ema.index_copy_(0, idx, ema)
        norms = device_row_norms(ema)  # float64, no overflow
        live = norms > 0
        alpha = torch.where(live, norms.max() / torch.where(live, norms, 1.0), 0.0)
        self.last_weights = alpha.to(device=dev, dtype=J.dtype)
        return combine(alpha, ema)
