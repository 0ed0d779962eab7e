"""Building blocks of the mixture-of-experts architectures (MMoE, CGC, PLE, DSelect-K, LTB).

* :func:`mlp`: the multilayer perceptron used as expert and tower for tabular inputs;
* :class:`ExpertBank`: ``E`` experts applied to one input, outputs stacked ``[B, E, ...]``;
* :class:`SoftmaxGate`: the softmax gate of MMoE and PLE, ``g(x) = softmax(W_g x)``;
* :func:`mix`: the gated sum ``Σ_i g_i f_i`` of stacked expert outputs;
* :class:`GatedMixture`: experts + one gate (a single-task mixture of experts, used for the
  single-task baselines of the gated architectures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from taskbalance.validation import is_int

__all__ = ["mlp", "ExpertBank", "SoftmaxGate", "GatedMixture", "mix", "ExpertFactory"]

#: ``factory(in_features, out_features) -> nn.Module`` mapping ``[B, in]`` to ``[B, out]``.
ExpertFactory = Callable[[int, int], nn.Module]


class ForgetsLastForward:
    """Mixin: tensors of the last forward pass (named in ``_transient``) are not part of a copy
    or pickle (``copy.deepcopy`` cannot copy non-leaf tensors, and they are stale anyway)."""

    _transient: tuple[str, ...] = ("_features",)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._transient:
            if name in state:
                state[name] = None
        return state


def _positive(name: str, value: object) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def mlp(in_features: int, dims: Sequence[int], *, final_activation: bool = True) -> nn.Sequential:
    """``Linear -> ReLU`` for each width in ``dims`` (ReLU after the last layer too unless
    ``final_activation=False``). ``dims=()`` gives an identity-like empty ``Sequential``."""
    _positive("in_features", in_features)
    layers: list[nn.Module] = []
    width = in_features
    for i, d in enumerate(dims):
        _positive(f"dims[{i}]", d)
        layers.append(nn.Linear(width, d))
        if final_activation or i < len(dims) - 1:
            layers.append(nn.ReLU())
        width = d
    return nn.Sequential(*layers)


def default_expert(in_features: int, out_features: int) -> nn.Module:
    """``Flatten -> Linear -> ReLU``: one hidden ReLU layer, as the experts of the MMoE paper's
    synthetic study (inputs are flattened from dim 1, so ``in_features`` is ``x[0].numel()``)."""
    return nn.Sequential(nn.Flatten(), *mlp(in_features, [out_features]))


class ExpertBank(nn.Module):
    """``E`` experts reading the same input; ``forward(x)`` stacks their outputs ``[B, E, ...]``.

    Args:
        num_experts: E.
        in_features: input features of each expert (``x.flatten(1)`` width).
        out_features: output features of each expert.
        factory: builds one expert; default :func:`default_expert`.
    """

    def __init__(
        self,
        num_experts: int,
        in_features: int,
        out_features: int,
        factory: ExpertFactory | None = None,
    ) -> None:
        super().__init__()
        _positive("num_experts", num_experts)
        _positive("in_features", in_features)
        _positive("out_features", out_features)
        make = factory or default_expert
        self.experts = nn.ModuleList([make(in_features, out_features) for _ in range(num_experts)])
        self.in_features = in_features
        self.out_features = out_features

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)


class SoftmaxGate(nn.Module):
    """``g(x) = softmax(W_g x + b)`` over ``num_experts``; ``x`` is flattened from dim 1 and the
    output ``[B, num_experts]`` sums to one per row.

    ``bias=False`` is the gate exactly as written in Ma et al. 2018 (eq. 8). Without a bias a gate
    cannot prefer some experts for its task independently of the input: with zero-mean inputs its
    average weights stay near uniform, which on ``synthetic-mtl`` costs MMoE much of its accuracy
    (see docs/architecture.md); most implementations add the bias.
    """

    def __init__(self, in_features: int, num_experts: int, *, bias: bool = False) -> None:
        super().__init__()
        _positive("in_features", in_features)
        _positive("num_experts", num_experts)
        self.linear = nn.Linear(in_features, num_experts, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x.flatten(1)), dim=-1)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """``Σ_i weights[:, i] · experts[:, i]``: ``weights [B, E]`` (or ``[E]``), ``experts
    [B, E, ...]`` -> ``[B, ...]``."""
    if weights.dim() == 1:
        weights = weights.expand(experts.shape[0], -1)
    if weights.shape != experts.shape[:2]:
        raise ValueError(
            f"gate weights of shape {tuple(weights.shape)} do not match the stacked expert "
            f"outputs of shape {tuple(experts.shape)} ([B, E, ...])"
        )
    shape = (*weights.shape, *([1] * (experts.dim() - 2)))
    return (weights.reshape(shape) * experts).sum(dim=1)


class GatedMixture(nn.Module):
    """Experts and one gate: ``x -> Σ_i g(x)_i f_i(x)`` (one task's view of a gated layer)."""

    def __init__(self, experts: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.experts = experts
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        return mix(self.gate(x), self.experts(x))
