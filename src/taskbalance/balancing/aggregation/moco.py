"""MoCo: multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from taskbalance.validation import is_number

from .._per_parameter_state import PerParameterState, device_gramian, device_row_norms
from ..base import GradientMethod, check_choice, check_positive
from ..registry import register
from ..solvers import combine, project_simplex

__all__ = ["MoCo"]


@register(
    "moco",
    paper="Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: A Provably "
    "Convergent Approach, ICLR 2023 (arXiv:2210.12624)",
)
class MoCo(PerParameterState, GradientMethod):
    """MoCo: MGDA-style weights on tracked (bias-corrected) gradient estimates.

    Fernando et al. 2023 (https://arxiv.org/abs/2210.12624), Algorithm 1 at step k:

    * tracking: ``y_t ← y_t − β_k (y_t − h_t)`` with ``h_t`` the task's stochastic gradient
      (``β_k = β / k^{σ_β}``);
    * weights: ``λ ← Π(λ − γ_k (Y Yᵀ + ρ I) λ)`` with ``γ_k = γ / k^{σ_γ}``, ``Y = [y_1 … y_T]``;
    * update: ``d = Yᵀ λ``.

    ``Π`` is the Euclidean projection onto the simplex (paper; ``simplex="projection"``) or,
    as in LibMTL's version of the authors' code, a softmax (``simplex="softmax"``).
    ``normalize="loss"`` replaces ``h_t`` by ``L_t g_t/‖g_t‖`` as that code does (it needs the
    losses; the Balancer passes them); ``"none"`` (default) uses ``g_t`` as the paper. ``y``
    starts at 0 and ``λ`` at ``1/T``.

    State (in ``state_dict``): ``y`` (``[T, P]``, J's dtype), ``λ`` and the step count. Param
    mode only. ``last_weights`` are ``λ`` (they weight the tracked ``y_t``). In a step where
    some tasks are absent their ``y_t`` and ``λ_t`` are kept and the direction uses the present
    tasks (their ``λ`` projected onto the simplex). The tracking acts as momentum on top of
    the optimizer's: LibMTL trains it with Adam at lr 1e-4; at 1e-3 on ``multidigits`` it stays
    at chance (measured in the README).

    Args:
        beta, beta_sigma: tracking step ``β`` in ``(0, 1]``, its decay ``σ_β`` (LibMTL: 0.5, 0.5).
        gamma, gamma_sigma: weight step ``γ > 0`` and its decay ``σ_γ`` (LibMTL: 0.1, 0.5).
        rho: ``ρ >= 0`` (LibMTL: 0).
        simplex: ``"projection"`` or ``"softmax"``.
        normalize: ``"none"`` or ``"loss"``.
    """

    _per_parameter_buffers = ("tracked",)
    tracked: Tensor
    lambdas: Tensor

    def __init__(
        self,
        num_tasks: int,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        simplex: str = "projection",
        normalize: str = "none",
    ) -> None:
        super().__init__(num_tasks)
        ok = is_number(beta)
        if not ok or not 0 < beta <= 1:
            raise ValueError(f"beta must be a number in (0, 1], got {beta!r}")
        self.beta = float(beta)
        self.beta_sigma = check_positive("beta_sigma", beta_sigma, allow_zero=True)
        self.gamma = check_positive("gamma", gamma)
        self.gamma_sigma = check_positive("gamma_sigma", gamma_sigma, allow_zero=True)
        self.rho = check_positive("rho", rho, allow_zero=True)
        self.simplex = check_choice("simplex", simplex, ("projection", "softmax"))
        self.normalize = check_choice("normalize", normalize, ("none", "loss"))
        self.needs_losses = normalize == "loss"
        self.step_count = 0
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer(
            "lambdas", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        )

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, beta={self.beta}, gamma={self.gamma}, rho={self.rho}, "
            f"simplex={self.simplex!r}, normalize={self.normalize!r}"
        )

    def reset(self) -> None:
        super().reset()
        self.step_count = 0
        self.tracked = torch.zeros(0, device=self.lambdas.device)
        self.lambdas.fill_(1.0 / self.num_tasks)

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(super().get_extra_state())
        state["step_count"] = self.step_count
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.step_count = int(state.get("step_count", 0))

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        T = self.num_tasks
        dev = J.device
        if self._check_width("tracked", self.tracked, J):
            self.tracked = torch.zeros(T, J.shape[1], dtype=J.dtype, device=dev)
        if self.tracked.device != dev or self.tracked.dtype != J.dtype:
            self.tracked = self.tracked.to(device=dev, dtype=J.dtype)
        self.step_count += 1
        k = self.step_count
        idx = (
            torch.arange(T, device=dev) if present is None else present.to(dev).nonzero().flatten()
        )
        h = J.detach()
        if self.normalize == "loss":
            assert losses is not None  # aggregate() raises first when needs_losses
            norms = device_row_norms(h)
            scale = torch.where(
                norms > 0, losses.to(norms) / torch.where(norms > 0, norms, 1.0), 0.0
            )
            h = combine_rows(scale, h)
        beta_k = self.beta / k**self.beta_sigma
        y = self.tracked.index_select(0, idx)
        y = y - beta_k * (y - h)
        self.tracked.index_copy_(0, idx, y)
        G = device_gramian(y)
        lam_all = self.lambdas.to(device=G.device)
        lam = lam_all.index_select(0, idx.to(G.device))
        n = G.shape[0]
        eye = torch.eye(n, dtype=G.dtype, device=G.device)
        gamma_k = self.gamma / k**self.gamma_sigma
        z = lam - gamma_k * ((G + self.rho * eye) @ lam)
        lam = project_simplex(z) if self.simplex == "projection" else torch.softmax(z, 0)
        self.lambdas = lam_all.index_put((idx.to(G.device),), lam)  # stays on the device
        self.last_weights = lam.to(device=dev, dtype=J.dtype)
        return combine(lam, y)


#: Columns of J scaled per float64 block: the temporary is ``T x 65536`` float64 numbers
#: (``T`` MB), never a float64 copy of the whole J.
_COLUMNS = 1 << 16


def combine_rows(scale: Tensor, J: Tensor) -> Tensor:
    """Each row of ``J`` multiplied by its factor, in ``J``'s dtype, with no overflow to inf
    for finite results (the factor is applied in float64 per row, then cast).

    The float64 products are formed one block of :data:`_COLUMNS` columns at a time, so a
    float32 or float16 J is not copied to float64 in full (same numbers as in one piece).
    """
    big = torch.finfo(J.dtype).max
    s = scale.to(device=J.device, dtype=torch.float64)[:, None]
    if J.dtype == torch.float64:
        return (J * s).clamp(-big, big)
    out = torch.empty_like(J)
    for start in range(0, J.shape[1], _COLUMNS):
        cols = slice(start, start + _COLUMNS)
        out[:, cols] = (J[:, cols].to(torch.float64) * s).clamp(-big, big)
    return out
