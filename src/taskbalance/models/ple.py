"""Progressive Layered Extraction (Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A
Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020,
https://doi.org/10.1145/3383313.3412236).

PLE stacks ``L`` extraction levels, each a :class:`~taskbalance.models.CGC` layer plus (below the
last level) a *shared gate* that feeds the next level's shared experts from all experts:

    g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x)) · S^{k,j}(x)      task k at level j
    g^{s,j}(x) = w^{s,j}(g^{s,j-1}(x)) · S^{s,j}(x)      shared path, j < L
    y^k(x)     = t^k(g^{k,L}(x))

``S^{k,j}`` = task k's and the shared experts of level j, ``S^{s,j}`` = every expert of level j
(all tasks' and the shared ones); task experts read ``g^{k,j-1}``, shared experts ``g^{s,j-1}``,
and ``g^{·,0} = x``. Each gate ``w = softmax(W · input)`` reads the input of its own path.
``L = 1`` is CGC.

**Which parameters are shared.** Below the last level every task expert also feeds the shared
gate, hence the next shared experts and every task: all of levels ``1 … L-1`` is shared, except
the task gates of level ``L-1``, whose output ``g^{k,L-1}`` only feeds task k. At level ``L`` the
shared experts are shared, task k's experts and gate belong to task k.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from taskbalance.models.experts import (
    ExpertBank,
    ExpertFactory,
    ForgetsLastForward,
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

__all__ = ["PLE"]


class _Level(nn.Module):
    """One extraction level: shared experts, task experts and gates, optional shared gate."""

    def __init__(
        self,
        tasks: Sequence[str],
        in_features: int,
        shared_experts: int,
        task_experts: int,
        expert_dim: int,
        factory: ExpertFactory | None,
        shared_gate: bool,
        gate_bias: bool,
    ) -> None:
        super().__init__()
        self.shared = ExpertBank(shared_experts, in_features, expert_dim, factory)
        self.task_experts = nn.ModuleDict(
            {t: ExpertBank(task_experts, in_features, expert_dim, factory) for t in tasks}
        )
        self.task_gates = nn.ModuleDict(
            {
                t: SoftmaxGate(in_features, task_experts + shared_experts, bias=gate_bias)
                for t in tasks
            }
        )
        total = len(tasks) * task_experts + shared_experts
        self.shared_gate = SoftmaxGate(in_features, total, bias=gate_bias) if shared_gate else None


class _OneTaskPLE(nn.Module):
    """Backbone of a single-task PLE copy: the tower input of its only task."""

    def __init__(self, model: PLE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.extract(x)[self.model.task_names[0]]


class PLE(ForgetsLastForward, MultiTaskNetwork):
    """PLE: ``levels`` stacked CGC extraction levels joined by shared gates.

    Args:
        in_features: width of the flattened input.
        towers: task name -> tower ``t^k`` reading ``[B, expert_dim]``.
        levels: L (>= 1).
        shared_experts, task_experts: experts per level (the same at every level).
        expert_dim: output width of every expert (also the input of the experts above level 1).
        expert_factory: ``factory(in_features, expert_dim) -> nn.Module``; default
            ``Flatten -> Linear -> ReLU``.
        gate_bias: gates ``softmax(W x + b)`` (the paper's have no bias); see
            :class:`~taskbalance.models.experts.SoftmaxGate`.
        task_names: optional task order.

    Parameter split (see the module docstring): ``task_parameters(k)`` = tower k, task k's
    experts and gate at level L and its gate at level L-1; everything else is shared (every task's
    loss reaches it).

    **Rep mode**: ``features`` is one tensor ``[B, m_s·expert_dim + T·expert_dim]`` that holds the
    outputs of level L's shared experts and, for ``L >= 2``, every task's input ``g^{k,L-1}`` to
    level L; the forward pass reads both back from it, so it separates the shared part from
    the task parts. The task gates of level L-1 lie above it: in rep mode they receive the
    balanced direction's block at their own output (which only their task reaches) rather than
    their task's raw gradient.
    """

    def __init__(
        self,
        in_features: int,
        towers: Mapping[str, nn.Module],
        *,
        levels: int = 2,
        shared_experts: int = 2,
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
        self.num_levels = _positive("levels", levels)
        self.num_shared = _positive("shared_experts", shared_experts)
        self.num_task = _positive("task_experts", task_experts)
        self.expert_dim = _positive("expert_dim", expert_dim)
        self._factory = expert_factory
        self.levels = nn.ModuleList(
            [
                _Level(
                    names,
                    in_features if j == 0 else expert_dim,
                    shared_experts,
                    task_experts,
                    expert_dim,
                    expert_factory,
                    shared_gate=j < levels - 1,
                    gate_bias=self.gate_bias,
                )
                for j in range(levels)
            ]
        )
        self.towers = nn.ModuleDict(ordered)
        self._features: Tensor | None = None
        self._check_partition()

    def _level(self, j: int) -> _Level:
        return cast(_Level, self.levels[j])

    def shared_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        last = self.num_levels - 1
        for j in range(self.num_levels):
            level = self._level(j)
            mods.append(level.shared)
            if level.shared_gate is not None:
                mods.append(level.shared_gate)
            if j < last:
                mods.extend(level.task_experts[t] for t in self.task_names)
            if j < last - 1:
                mods.extend(level.task_gates[t] for t in self.task_names)
        return mods

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        last = self._level(self.num_levels - 1)
        mods = [last.task_experts[task], last.task_gates[task]]
        if self.num_levels >= 2:
            mods.append(self._level(self.num_levels - 2).task_gates[task])
        mods.append(self.towers[task])
        return mods

    @property
    def features(self) -> Tensor | None:
        """Level L's shared-expert outputs and each task's input to level L, flattened and
        concatenated ``[B, m_s·expert_dim (+ T·expert_dim)]``, of the last forward."""
        return self._features

    def extract(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's tower input ``g^{k,L}(x)`` ``[B, expert_dim]``."""
        q_shared = x
        q = {t: x for t in self.task_names}
        last = self.num_levels - 1
        for j in range(self.num_levels):
            level = self._level(j)
            shared = level.shared(q_shared)
            if j == last:
                shared, q = self._through_features(shared, q, with_inputs=j > 0)
            task_out = {t: level.task_experts[t](q[t]) for t in self.task_names}
            if level.shared_gate is not None:
                everything = torch.cat([*task_out.values(), shared], dim=1)
                q_shared = mix(level.shared_gate(q_shared), everything)
            q = {
                t: mix(level.task_gates[t](q[t]), torch.cat([task_out[t], shared], dim=1))
                for t in self.task_names
            }
        return q

    def _through_features(
        self, shared: Tensor, q: dict[str, Tensor], *, with_inputs: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Route the last level's shared experts (and the task inputs) through one tensor."""
        parts = [shared.flatten(1)]
        if with_inputs:
            parts += [q[t].flatten(1) for t in self.task_names]
        z = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        self._features = z
        sizes = [p.shape[1] for p in parts]
        pieces = z.split(sizes, dim=1)
        shared = pieces[0].view_as(shared)
        if with_inputs:
            q = {t: p.view_as(q[t]) for t, p in zip(self.task_names, pieces[1:], strict=True)}
        return shared, q

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        q = self.extract(x)
        return {t: self.towers[t](q[t]) for t in self.task_names}

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """One single-task PLE per task (same levels and experts, only that task's path) with a
        copy of its tower. The extraction levels are newly initialised: a one-task PLE's shared
        gates have fewer inputs, so the multi-task weights do not fit."""
        out: dict[str, MultiTaskModel] = {}
        for task in self.task_names:
            single = PLE(
                self.in_features,
                {task: nn.Identity()},
                levels=self.num_levels,
                shared_experts=self.num_shared,
                task_experts=self.num_task,
                expert_dim=self.expert_dim,
                expert_factory=self._factory,
                gate_bias=self.gate_bias,
            )
            net = MultiTaskModel(_OneTaskPLE(single), {task: copy.deepcopy(self.towers[task])})
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out

    def extra_repr(self) -> str:
        return (
            f"tasks={list(self.task_names)}, levels={self.num_levels}, "
            f"shared_experts={self.num_shared}, task_experts={self.num_task}, "
            f"expert_dim={self.expert_dim}"
        )
