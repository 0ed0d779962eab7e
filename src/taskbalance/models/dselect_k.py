"""DSelect-K gates (Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi,
"DSelect-k: Differentiable Selection in the Mixture of Experts with Applications to Multi-Task
Learning", NeurIPS 2021, https://arxiv.org/abs/2106.03760).

An MMoE whose softmax gates are replaced by *sparse*, continuously differentiable gates that pick
at most ``k`` of the ``n`` experts. Expert indices are written in binary with ``m = ⌈log₂ n⌉``
bits; a *single-expert selector* holds ``m`` real numbers ``z`` and puts on expert ``l`` the
weight

    r(z)_l = Π_{b: bit b of l is 1} S(z_b) · Π_{b: bit b of l is 0} (1 - S(z_b))

with the smooth-step function (0 below -γ/2, 1 above γ/2, a cubic in between)

    S(t) = -2/γ³ · t³ + 3/(2γ) · t + 1/2     for |t| <= γ/2.

``r(z)`` sums to one for every ``z``, and selects exactly one expert once every ``S(z_b)`` is 0 or
1 (which the flat ends of S make stable). The gate mixes ``k`` selectors with softmax weights:

    q(x) = Σ_{i=1}^{k} softmax(α)_i · r(z^{(i)})

so it sums to one and has at most ``k`` non-zeros when the selectors are binary. With
``per_example=True`` (default) ``z^{(i)}`` and ``α`` are linear functions of the input (the
paper's per-example gating); with ``False`` they are free parameters per task (static gates).

Initialisation follows the paper's released implementation: ``z`` (weights and bias) uniform in
``±γ/100``, ``α`` uniform in ``±0.05``. The paper's optional entropy regulariser, which speeds up
the convergence of the selectors to binary, is ``λ ·`` :meth:`DSelectK.entropy` with
``entropy_weight=λ``: :meth:`DSelectK.regularization` returns it, and the
:class:`~taskbalance.training.Trainer` adds its gradient to every step's balanced update (it is
not a task: no balancing method weights it; see :mod:`taskbalance.training.model_hooks`).

When ``n`` is not a power of two the ``2^m - n`` unused codes are folded onto experts
``code mod n`` (the reference adds a penalty instead); the gate still sums to one and still
selects at most ``k`` experts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from taskbalance.models.experts import ExpertFactory, ForgetsLastForward, _positive
from taskbalance.models.mmoe import MMoE
from taskbalance.validation import is_int, is_number

__all__ = ["DSelectK", "DSelectKGate", "smooth_step"]


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step ``S(t)``: 0 for ``t <= -γ/2``, 1 for ``t >= γ/2``."""
    half = gamma / 2
    poly = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -half, torch.zeros_like(t), torch.where(t >= half, 1.0, poly))


class DSelectKGate(ForgetsLastForward, nn.Module):
    """Sparse gate over ``num_experts`` experts selecting at most ``k``.

    ``forward(x) -> [B, num_experts]`` weights (non-negative, summing to one). After a forward
    pass ``selector_outputs`` holds the ``[B, k, 2^m]`` selector distributions ``r(z^{(i)})``.
    """

    _transient = ("selector_outputs",)
    bits: Tensor  # [2^m, m] bool: bit b of code c
    fold: Tensor  # [2^m, n]: code c -> expert c mod n

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int,
        *,
        gamma: float = 1.0,
        per_example: bool = True,
    ) -> None:
        super().__init__()
        _positive("in_features", in_features)
        if not is_int(num_experts) or num_experts < 2:
            raise ValueError(f"DSelect-K needs num_experts >= 2, got {num_experts!r}")
        if not is_int(k) or not 1 <= k <= num_experts:
            raise ValueError(f"k must be an int in [1, num_experts={num_experts}], got {k!r}")
        if not is_number(gamma) or gamma <= 0:
            raise ValueError(f"gamma must be a positive number, got {gamma!r}")
        self.num_experts = num_experts
        self.k = k
        self.gamma = float(gamma)
        self.per_example = bool(per_example)
        self.num_bits = math.ceil(math.log2(num_experts))
        codes = 2**self.num_bits
        bits = torch.tensor(
            [[(c >> b) & 1 for b in range(self.num_bits)] for c in range(codes)], dtype=torch.bool
        )
        self.register_buffer("bits", bits, persistent=False)  # [2^m, m]
        fold = torch.zeros(codes, num_experts)
        fold[torch.arange(codes), torch.arange(codes) % num_experts] = 1.0
        self.register_buffer("fold", fold, persistent=False)  # [2^m, n]
        z_bound, w_bound = self.gamma / 100, 0.05
        if self.per_example:
            self.z = nn.Linear(in_features, k * self.num_bits)
            self.w = nn.Linear(in_features, k)
            for layer, bound in ((self.z, z_bound), (self.w, w_bound)):
                nn.init.uniform_(layer.weight, -bound, bound)
                nn.init.uniform_(layer.bias, -bound, bound)
        else:
            self.z_logits = nn.Parameter(torch.empty(k, self.num_bits).uniform_(-z_bound, z_bound))
            self.w_logits = nn.Parameter(torch.empty(k).uniform_(-w_bound, w_bound))
        self.selector_outputs: Tensor | None = None

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[0]
        if self.per_example:
            flat = x.flatten(1)
            return self.z(flat).view(batch, self.k, self.num_bits), self.w(flat)
        return (
            self.z_logits.expand(batch, -1, -1),
            self.w_logits.expand(batch, -1),
        )

    def forward(self, x: Tensor) -> Tensor:
        z, w = self._logits(x)
        s = smooth_step(z, self.gamma).unsqueeze(2)  # [B, k, 1, m]
        # r(z)_c: product over bits of S(z_b) where bit b of code c is 1, else 1 - S(z_b)
        r = torch.where(self.bits, s, 1.0 - s).prod(dim=-1)  # [B, k, 2^m]
        self.selector_outputs = r
        mixed = (torch.softmax(w, dim=-1).unsqueeze(-1) * r).sum(dim=1)  # [B, 2^m]
        return mixed @ self.fold.to(mixed.dtype)

    def entropy(self) -> Tensor:
        """Entropy ``-Σ r log r`` of the selectors of the last forward, summed over selectors
        and averaged over the batch (0 when every selector picks one expert)."""
        if self.selector_outputs is None:
            raise RuntimeError("call forward() before entropy()")
        r = self.selector_outputs
        return -(r * torch.log(r.clamp_min(1e-12))).sum(dim=(1, 2)).mean()

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, k={self.k}, gamma={self.gamma}, "
            f"per_example={self.per_example}"
        )


class DSelectK(MMoE):
    """MMoE with DSelect-K gates: each task mixes at most ``k`` of the shared experts.

    Args:
        in_features, towers, num_experts, expert_dim, expert_factory, task_names: as
            :class:`~taskbalance.models.MMoE`.
        k: the most experts each task's gate selects (``1 <= k <= num_experts``).
        gamma: width γ of the smooth-step's cubic region (default 1, as the authors' code).
        per_example: input-dependent gates (default) or one static gate per task.
        entropy_weight: λ >= 0 of the entropy regulariser :meth:`regularization` (default 0:
            off).

    Parameter split and rep mode as :class:`~taskbalance.models.MMoE`: the experts are shared,
    gate k and tower k belong to task k, ``features`` is the stacked expert outputs.
    """

    def __init__(
        self,
        in_features: int,
        towers: Mapping[str, nn.Module],
        *,
        num_experts: int = 8,
        k: int = 2,
        gamma: float = 1.0,
        per_example: bool = True,
        entropy_weight: float = 0.0,
        expert_dim: int = 16,
        expert_factory: ExpertFactory | None = None,
        task_names: Sequence[str] | None = None,
    ) -> None:
        if not is_number(entropy_weight) or not 0 <= entropy_weight < math.inf:
            raise ValueError(f"entropy_weight must be a finite number >= 0, got {entropy_weight!r}")
        self.entropy_weight = float(entropy_weight)
        self.k = k
        self.gamma = gamma
        self.per_example = per_example
        super().__init__(
            in_features,
            towers,
            num_experts=num_experts,
            expert_dim=expert_dim,
            expert_factory=expert_factory,
            task_names=task_names,
        )

    def _make_gate(self) -> nn.Module:
        return DSelectKGate(
            self.in_features,
            self.num_experts,
            self.k,
            gamma=self.gamma,
            per_example=self.per_example,
        )

    def entropy(self) -> Tensor:
        """Sum over tasks of :meth:`DSelectKGate.entropy` (the paper's sparsity regulariser)."""
        return torch.stack([gate.entropy() for gate in self.gates.values()]).sum()  # type: ignore[operator]

    def regularization(self) -> Tensor | None:
        """``entropy_weight ·`` :meth:`entropy` of the last forward (``None`` when the weight is
        0); the Trainer adds its gradient to each step's update."""
        return self.entropy_weight * self.entropy() if self.entropy_weight else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, entropy_weight={self.entropy_weight}"
