"""Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018,
https://doi.org/10.1145/3219819.3220007).

The shared bottom of hard sharing is replaced by ``n`` experts ``f_1 … f_n`` shared by all tasks,
and every task ``k`` gets its own gate and tower:

    f^k(x) = Σ_{i=1}^{n} g^k(x)_i f_i(x)          (eq. 7)
    g^k(x) = softmax(W_{gk} x),  W_{gk} ∈ R^{n×d}  (eq. 8)
    y_k    = h^k(f^k(x))                            (eq. 6)

so tasks that need different features can weight the experts differently, while related tasks
can share them. The paper's synthetic study uses 8 single-layer ReLU experts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

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

__all__ = ["MMoE"]


class MMoE(ForgetsLastForward, MultiTaskNetwork):
    """MMoE: shared experts, one softmax gate and one tower per task.

    Args:
        in_features: width of the flattened input ``x[0].numel()`` (what experts and gates read).
        towers: task name -> tower ``h^k`` reading the ``[B, expert_dim]`` mixture (the task's
            head).
        num_experts: n (paper's synthetic study: 8).
        expert_dim: output width of each expert.
        expert_factory: ``factory(in_features, expert_dim) -> nn.Module`` building one expert;
            default ``Flatten -> Linear -> ReLU``.
        gate_bias: gates ``softmax(W x + b)`` instead of the paper's ``softmax(W x)`` (eq. 8);
            see :class:`~taskbalance.models.experts.SoftmaxGate`.
        task_names: optional task order.

    Parameter split: ``shared_parameters()`` = the experts (every task's loss reaches all of
    them); ``task_parameters(k)`` = gate k and tower k (only task k's loss reaches them).

    **Rep mode**: ``features`` is the stacked expert outputs ``[B, n, expert_dim]`` of the last
    forward pass. Every gate reads the input ``x``, not the experts, so this tensor separates the
    shared part (above it) from the task parts (below it) exactly.
    """

    def __init__(
        self,
        in_features: int,
        towers: Mapping[str, nn.Module],
        *,
        num_experts: int = 8,
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
        self.num_experts = _positive("num_experts", num_experts)
        self.expert_dim = _positive("expert_dim", expert_dim)
        self.experts = ExpertBank(num_experts, in_features, expert_dim, expert_factory)
        self.gates = nn.ModuleDict({t: self._make_gate() for t in names})
        self.towers = nn.ModuleDict(ordered)
        self._features: Tensor | None = None
        self._check_partition()

    def _make_gate(self) -> nn.Module:
        """The gate of one task: ``x -> [B, n]`` weights summing to one."""
        return SoftmaxGate(self.in_features, self.num_experts, bias=self.gate_bias)

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts]

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        return [self.gates[task], self.towers[task]]

    @property
    def features(self) -> Tensor | None:
        """Stacked expert outputs ``[B, n, expert_dim]`` of the last forward (``None`` before)."""
        return self._features

    def gate_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's expert weights ``[B, n]`` for input ``x``."""
        return {t: self.gates[t](x) for t in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        experts = self.experts(x)
        self._features = experts
        return {t: self.towers[t](mix(self.gates[t](x), experts)) for t in self.task_names}

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """One mixture of experts per task: copies of the experts, its gate and its tower."""
        out: dict[str, MultiTaskModel] = {}
        for task in self.task_names:
            backbone = GatedMixture(copy.deepcopy(self.experts), copy.deepcopy(self.gates[task]))
            net = MultiTaskModel(backbone, {task: copy.deepcopy(self.towers[task])})
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out

    def extra_repr(self) -> str:
        return (
            f"tasks={list(self.task_names)}, num_experts={self.num_experts}, "
            f"expert_dim={self.expert_dim}"
        )
