"""GradNorm (Chen et al., ICML 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..base import LossMethod, check_positive, follow, present_mask
from ..registry import register


@register(
    "gradnorm",
    paper="Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: gradient normalization for "
    "adaptive loss balancing in deep multitask networks, ICML 2018, "
    "https://arxiv.org/abs/1711.02257",
)
class GradNorm(LossMethod):
    """GradNorm: learnable weights that equalise the tasks' training rates.

    With ``n_t = ‖∇_W L_t‖`` on the last shared layer W (measured by the Balancer and handed to
    :meth:`observe_grad_norms` before each step), ``G_t = w_t·n_t``, ``Ḡ = mean_t G_t``,
    ``L̃_t = L_t / L_t(0)`` (``L_t(0)``: the loss at the first step the task is present),
    ``r_t = L̃_t / mean(L̃)`` and the target ``Ḡ·r_t^α`` held constant, the weights minimise::

        L_grad = Σ_t |G_t − Ḡ·r_t^α|,   ∂L_grad/∂w_t = sign(G_t − Ḡ·r_t^α)·n_t

    That gradient is accumulated into ``w.grad`` (as autograd would), so the optimizer that
    receives ``balancer.parameters()`` updates ``w``. The network is trained on
    ``Σ_t w_t·L_t`` with ``w`` detached. At the start of every step (after the previous
    optimizer update) ``w`` is clamped to a small floor and renormalised to ``Σ_t w_t = T``.
    ``w`` starts at 1. A larger ``alpha`` pulls harder towards equal training rates; 0 asks
    for equal gradient norms.

    Without observed norms (``combine(L)`` called directly, outside a Balancer) the step is a
    plain weighted sum ``Σ_t w_t·L_t`` and no gradient is written to ``w``.

    Args:
        alpha: the asymmetry ``α`` (>= 0).

    Paper: https://arxiv.org/abs/1711.02257
    """

    needs_last_layer_grad_norms = True
    #: Lower bound of each weight before renormalisation (weights stay positive).
    min_weight = 1e-4

    initial_losses: Tensor
    has_initial: Tensor

    def __init__(self, num_tasks: int, alpha: float = 1.5) -> None:
        super().__init__(num_tasks)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self.register_buffer("has_initial", torch.zeros(num_tasks, dtype=torch.bool))
        self._norms: Tensor | None = None

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.weights.fill_(1.0)
        self.initial_losses.zero_()
        self.has_initial.zero_()
        self._norms = None

    def observe_grad_norms(self, norms: Tensor) -> None:
        """Record ``‖∇_W L_t‖`` ([T], 0 for absent tasks) for the next :meth:`combine`."""
        if not isinstance(norms, Tensor) or norms.shape != (self.num_tasks,):
            shape = list(norms.shape) if isinstance(norms, Tensor) else type(norms).__name__
            raise ValueError(
                f"gradnorm needs one gradient norm per task (shape [{self.num_tasks}]), got {shape}"
            )
        self._norms = norms.detach()

    def _renormalise(self) -> None:
        with torch.no_grad():
            w = self.weights
            w.clamp_(min=self.min_weight)
            w.mul_(self.num_tasks / w.sum())

    def _terms(self, losses: Tensor, present: Tensor | None) -> Tensor:
        self._renormalise()
        p = present_mask(losses, present)
        w = self.weights.detach().to(device=losses.device, dtype=losses.dtype)
        L = losses.detach()

        init = follow(self.initial_losses, L)
        has = follow(self.has_initial, L)
        init = torch.where(p & ~has, L.to(init.dtype), init)
        self.initial_losses = init
        self.has_initial = has | p

        norms, self._norms = self._norms, None
        if norms is not None and self.weights.requires_grad:
            self._write_weight_grad(w, L, init.to(L.dtype), norms.to(L), p)

        self.last_weights = torch.where(p, w, 0.0)
        return w * losses

    def _write_weight_grad(self, w: Tensor, L: Tensor, L0: Tensor, n: Tensor, p: Tensor) -> None:
        pf = p.to(L.dtype)
        count = pf.sum()
        G = w * n
        G_mean = (G * pf).sum() / count
        # r_t^α = (L̃_t / mean L̃)^α in the log domain: finite for losses of any scale (r_t <= T).
        tiny = torch.finfo(L.dtype).tiny
        log_ratio = torch.log(L.clamp_min(tiny)) - torch.log(L0.clamp_min(tiny))
        log_ratio = torch.where(p, log_ratio, -math.inf)
        log_mean = torch.logsumexp(log_ratio, 0) - torch.log(count)
        r_alpha = torch.where(p, torch.exp(self.alpha * (log_ratio - log_mean)), 0.0)
        target = G_mean * r_alpha
        grad = torch.where(p, torch.sign(G - target) * n, 0.0)
        grad = grad.to(device=self.weights.device, dtype=self.weights.dtype)
        if self.weights.grad is None:
            self.weights.grad = grad
        else:
            self.weights.grad.add_(grad)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, alpha={self.alpha}"
