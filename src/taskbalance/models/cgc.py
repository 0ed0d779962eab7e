"""Customized Gate Control (Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
https://doi.org/10.1145/3383313.3412236).

CGC separates the experts of MMoE into ``m_s`` experts shared by all tasks and ``m_k`` experts of
each task k. Task k's gate mixes only its own and the shared experts:

    g^k(x) = w^k(x) · S^k(x)
    w^k(x) = softmax(W_g^k x),                W_g^k ∈ R^{(m_k + m_s) × d}
    S^k(x) = [E_(k,1), …, E_(k,m_k), E_(s,1), …, E_(s,m_s)]ᵀ
    y^k(x) = t^k(g^k(x))

so a task's own experts are never pulled towards another task (the "seesaw" effect the paper
measures on MMoE). Stacking CGC layers gives :class:`~taskbalance.models.PLE`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from taskbalance.models.experts import (
    ExpertBank,
    ExpertFactory,
    ForgetsLastForward,
    GatedMixture,
    SoftmaxGate,
    _positive,
    mix,
)
from taskbalance.models.multitask import (
    MultiTaskModel,
    MultiTaskNetwork,
    _match_heads,
    reset_parameters,
)

__all__ = ["CGC", "ConcatExperts"]


class ConcatExperts(nn.Module):
    """Several :class:`~taskbalance.models.experts.ExpertBank` on one input, outputs concatenated
    along the expert dimension (``[B, ΣE, ...]``), in the given order."""

    def __init__(self, banks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.banks = nn.ModuleList(banks)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([bank(x) for bank in self.banks], dim=1)


class CGC(ForgetsLastForward, MultiTaskNetwork):
    """CGC: shared experts, per-task experts, one gate and tower per task.

    Args:
        in_features: width of the flattened input.
        towers: task name -> tower ``t^k`` reading the ``[B, expert_dim]`` mixture.
        shared_experts: m_s (>= 1).
        task_experts: m_k, the same for every task (>= 1).
        expert_dim: output width of each expert.
        expert_factory: ``factory(in_features, expert_dim) -> nn.Module``; default
            ``Flatten -> Linear -> ReLU``.
        gate_bias: gates ``softmax(W x + b)`` (the paper's have no bias); see
            :class:`~taskbalance.models.experts.SoftmaxGate`.
        task_names: optional task order.

    Parameter split: ``shared_parameters()`` = the shared experts; ``task_parameters(k)`` = task
    k's experts, gate and tower (no other task's loss reaches them).

    **Rep mode**: ``features`` is the stacked shared-expert outputs ``[B, m_s, expert_dim]``;
    task experts and gates read the input, so this tensor is the only way from the shared
    parameters to the losses.
    """

    def __init__(
        self,
        in_features: int,
        towers: Mapping[str, nn.Module],
        *,
        shared_experts: int = 4,
        task_experts: int = 2,
        expert_dim: int = 16,
        expert_factory: ExpertFactory | None = None,
        gate_bias: bool = False,
        task_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.gate_bias = bool(gate_bias)
        names, ordered = _match_heads(towers, task_names)
        self.task_names = names
        self.in_features = _positive("in_features", in_features)
        self.num_shared = _positive("shared_experts", shared_experts)
        self.num_task = _positive("task_experts", task_experts)
        self.expert_dim = _positive("expert_dim", expert_dim)
        self.shared = ExpertBank(shared_experts, in_features, expert_dim, expert_factory)
        self.task_experts = nn.ModuleDict(
            {t: ExpertBank(task_experts, in_features, expert_dim, expert_factory) for t in names}
        )
        self.gates = nn.ModuleDict(
            {
                t: SoftmaxGate(in_features, task_experts + shared_experts, bias=gate_bias)
                for t in names
            }
        )
        self.towers = nn.ModuleDict(ordered)
        self._features: Tensor | None = None
        self._check_partition()

    def shared_modules(self) -> list[nn.Module]:
        return [self.shared]

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        return [self.task_experts[task], self.gates[task], self.towers[task]]

    @property
    def features(self) -> Tensor | None:
        """Stacked shared-expert outputs ``[B, m_s, expert_dim]`` of the last forward."""
        return self._features

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's weights ``[B, m_k + m_s]`` (own experts first, then the shared ones)."""
        return {t: self.gates[t](x) for t in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.shared(x)
        self._features = shared
        out: dict[str, Tensor] = {}
        for t in self.task_names:
            experts = torch.cat([self.task_experts[t](x), shared], dim=1)
            out[t] = self.towers[t](mix(self.gates[t](x), experts))
        return out

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """One gated mixture per task: copies of its experts, the shared experts, its gate and
        its tower."""
        out: dict[str, MultiTaskModel] = {}
        for task in self.task_names:
            experts = ConcatExperts(
                [copy.deepcopy(self.task_experts[task]), copy.deepcopy(self.shared)]
            )
            backbone = GatedMixture(experts, copy.deepcopy(self.gates[task]))
            net = MultiTaskModel(backbone, {task: copy.deepcopy(self.towers[task])})
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out

    def extra_repr(self) -> str:
        return (
            f"tasks={list(self.task_names)}, shared_experts={self.num_shared}, "
            f"task_experts={self.num_task}, expert_dim={self.expert_dim}"
        )
