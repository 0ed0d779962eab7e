"""Learning to Branch (Guo, Lee, Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020,
https://arxiv.org/abs/2006.01895).

The network is a stack of ``L`` layers, each with several *nodes* (copies of the layer of a
single-task network). Layer ``l`` has ``n_l`` nodes and the last layer one node per task. Every
node ``j`` of layer ``l >= 1`` chooses one parent among the ``n_{l-1}`` nodes below it; the
choices of all layers form a tree whose root is the input and whose leaves are the tasks, so
where two tasks' paths part is where the network branches. The choice is relaxed with the
Gumbel-softmax so that it is learned by gradient descent together with the weights:

    d_{l,j} = GumbelSoftmax(θ_{l,j}; τ) ∈ Δ^{n_{l-1}}       (a sample per forward pass)
    h_{l,j} = node_{l,j}( Σ_i d_{l,j,i} · h_{l-1,i} )
    y_k     = head_k(h_{L-1,k})

with learnable branching logits ``θ`` and temperature τ. Lowering τ during training sharpens the
samples towards one-hot (Jang et al. 2017), as Guo et al. do: with ``anneal=r < 1`` the
temperature of epoch ``e`` (0-based) is ``τ_e = max(min_temperature, temperature · r^e)``, set by
:meth:`LTB.set_epoch`, which the :class:`~taskbalance.training.Trainer` calls before every epoch
(a function of the epoch, so a resumed run continues the schedule exactly). The paper gives no
schedule constants that we could confirm; the exponential form is the one of Jang et al.
``hard=True`` uses the straight-through one-hot sample. In eval mode
each node takes its most likely parent (``argmax θ``), i.e. the learned tree; :meth:`LTB.tree`
lists it. For a search in the usual style, give θ its own learning rate
(:meth:`LTB.branching_parameters`) and retrain the derived tree afterwards
(:meth:`LTB.single_task_copies` gives each task's path).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from taskbalance.models.experts import ForgetsLastForward, mix
from taskbalance.models.multitask import (
    MultiTaskModel,
    MultiTaskNetwork,
    _match_heads,
    reset_parameters,
)
from taskbalance.validation import is_int, is_number

__all__ = ["LTB", "BranchLogits"]


class BranchLogits(nn.Module):
    """Branching logits θ ``[children, parents]`` (zeros: every parent equally likely)."""

    def __init__(self, children: int, parents: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(children, parents))

    def sample(self, temperature: float, hard: bool, training: bool) -> Tensor:
        """Parent weights ``[children, parents]``: a Gumbel-softmax sample when training, the
        one-hot argmax otherwise."""
        if training:
            return F.gumbel_softmax(self.logits, tau=temperature, hard=hard, dim=-1)
        index = self.logits.argmax(dim=-1)
        return F.one_hot(index, self.logits.shape[-1]).to(self.logits.dtype)


class LTB(ForgetsLastForward, MultiTaskNetwork):
    """Learning-to-branch network over the layer stack of a single-task network.

    Args:
        layers: the single-task layer stack (``L >= 2`` layers); each node is a deep copy of
            its layer.
        heads: task name -> head reading that task's last-layer node output.
        nodes: nodes per layer ``n_0 … n_{L-2}`` below the last layer (which has one node per
            task); default T at every layer, enough for any tree.
        temperature: Gumbel-softmax temperature τ (> 0), settable during training; with
            ``anneal < 1`` the schedule's starting value.
        anneal: factor r in ``(0, 1]`` per epoch of the schedule ``max(min_temperature,
            temperature · r^epoch)`` that :meth:`set_epoch` applies (default 1: no schedule,
            ``set_epoch`` leaves τ alone).
        min_temperature: the schedule's floor (> 0; default 0.5, Jang et al. 2017).
        hard: straight-through one-hot samples instead of soft ones.
        reinitialize: give every node its own random initialisation (default; nodes of one
            layer with equal weights and inputs would stay equal).
        task_names: optional task order.

    Parameter split: ``task_parameters(k)`` = task k's last-layer node, its branching logits
    and its head; everything else (the nodes of layers ``0 … L-2`` and their logits) is shared,
    since during the search every task's path may run through any of them.

    **Rep mode**: ``features`` is the stacked outputs ``[B, n_{L-2}, ...]`` of layer ``L-2``,
    which the task nodes of the last layer mix with their own branching weights.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        heads: Mapping[str, nn.Module],
        *,
        nodes: Sequence[int] | None = None,
        temperature: float = 1.0,
        anneal: float = 1.0,
        min_temperature: float = 0.5,
        hard: bool = False,
        reinitialize: bool = True,
        task_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        names, ordered = _match_heads(heads, task_names)
        self.task_names = names
        layer_list = list(layers)
        if len(layer_list) < 2:
            raise ValueError(
                f"LTB needs at least 2 layers (shared layers below, one node per task on top), "
                f"got {len(layer_list)}"
            )
        for i, layer in enumerate(layer_list):
            if not isinstance(layer, nn.Module):
                raise TypeError(f"layers[{i}] must be an nn.Module, got {type(layer)!r}")
        below = len(layer_list) - 1
        counts = [len(names)] * below if nodes is None else list(nodes)
        if len(counts) != below:
            raise ValueError(
                f"nodes gives {len(counts)} counts; give one per layer below the last "
                f"({below}); the last layer has one node per task"
            )
        for i, n in enumerate(counts):
            if not is_int(n) or n < 1:
                raise ValueError(f"nodes[{i}] must be a positive int, got {n!r}")
        self.node_counts = (*counts, len(names))
        self.hard = bool(hard)
        self.temperature = temperature
        if not is_number(anneal) or not 0 < anneal <= 1:
            raise ValueError(f"anneal must be a number in (0, 1], got {anneal!r}")
        if not is_number(min_temperature) or not 0 < min_temperature < math.inf:
            raise ValueError(f"min_temperature must be a positive number, got {min_temperature!r}")
        self.initial_temperature, self.anneal = float(temperature), float(anneal)
        self.min_temperature = float(min_temperature)

        def copies(layer: nn.Module, n: int) -> nn.ModuleList:
            out = nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])
            if reinitialize:
                reset_parameters(out)
            return out

        self.shared_nodes = nn.ModuleList(
            [copies(layer, n) for layer, n in zip(layer_list[:-1], counts, strict=True)]
        )
        self.shared_branches = nn.ModuleList(
            [BranchLogits(counts[l], counts[l - 1]) for l in range(1, below)]  # noqa: E741
        )
        last = copies(layer_list[-1], len(names))
        self.task_nodes = nn.ModuleDict({t: last[k] for k, t in enumerate(names)})
        self.task_branches = nn.ModuleDict({t: BranchLogits(1, counts[-1]) for t in names})
        self.heads = nn.ModuleDict(ordered)
        self._features: Tensor | None = None
        self._check_partition()

    @property
    def temperature(self) -> float:
        """Gumbel-softmax temperature τ."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not is_number(value) or not value > 0:
            raise ValueError(f"temperature must be a positive number, got {value!r}")
        self._temperature = float(value)

    def temperature_at(self, epoch: int) -> float:
        """The schedule's temperature of ``epoch`` (0-based): ``max(min_temperature,
        temperature · anneal^epoch)``, the initial temperature when ``anneal == 1``."""
        if not is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if self.anneal == 1.0:
            return self.initial_temperature
        return max(self.min_temperature, self.initial_temperature * self.anneal**epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the temperature of ``epoch`` (:meth:`temperature_at`); does nothing without a
        schedule (``anneal == 1``), so a temperature set by hand stays."""
        if self.anneal != 1.0:
            self.temperature = self.temperature_at(epoch)

    def shared_modules(self) -> list[nn.Module]:
        return [self.shared_nodes, self.shared_branches]

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        return [self.task_nodes[task], self.task_branches[task], self.heads[task]]

    def branching_parameters(self) -> list[nn.Parameter]:
        """Every branching logit θ (shared and per task), e.g. for their own optimizer group."""
        branches = [*self.shared_branches, *self.task_branches.values()]
        return [cast(BranchLogits, b).logits for b in branches]

    def branching_probabilities(self) -> list[Tensor]:
        """``softmax(θ)`` per layer ``1 … L-1``: ``[n_l, n_{l-1}]`` (detached)."""
        probs = [torch.softmax(cast(BranchLogits, b).logits, -1) for b in self.shared_branches]
        last = torch.cat([cast(BranchLogits, b).logits for b in self.task_branches.values()])
        return [p.detach() for p in [*probs, torch.softmax(last, -1)]]

    def tree(self) -> list[list[int]]:
        """The most likely parent of every node of layers ``1 … L-1`` (the learned tree)."""
        return [p.argmax(-1).tolist() for p in self.branching_probabilities()]

    @property
    def features(self) -> Tensor | None:
        """Stacked outputs of layer L-2 ``[B, n_{L-2}, ...]`` of the last forward."""
        return self._features

    def _sample(self, branch: nn.Module) -> Tensor:
        return cast(BranchLogits, branch).sample(self.temperature, self.hard, self.training)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        first = cast(nn.ModuleList, self.shared_nodes[0])
        h = torch.stack([node(x) for node in first], dim=1)
        for nodes, branch in zip(list(self.shared_nodes)[1:], self.shared_branches, strict=True):
            weights = self._sample(branch)  # [children, parents]
            h = torch.stack(
                [node(mix(w, h)) for node, w in zip(nodes, weights, strict=True)],  # type: ignore[call-overload]
                dim=1,
            )
        self._features = h
        out: dict[str, Tensor] = {}
        for t in self.task_names:
            weights = self._sample(self.task_branches[t])[0]
            out[t] = self.heads[t](self.task_nodes[t](mix(weights, h)))
        return out

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """Each task's path through the learned tree (most likely parents), copied into a chain
        of layers with the task's head: the single-task network of the same shape."""
        parents = self.tree()
        out: dict[str, MultiTaskModel] = {}
        for k, task in enumerate(self.task_names):
            chain: list[nn.Module] = [self.task_nodes[task]]
            node = parents[-1][k]
            for depth in range(len(self.shared_nodes) - 1, -1, -1):
                chain.append(cast(nn.ModuleList, self.shared_nodes[depth])[node])
                if depth > 0:
                    node = parents[depth - 1][node]
            backbone = nn.Sequential(*[copy.deepcopy(m) for m in reversed(chain)])
            net = MultiTaskModel(backbone, {task: copy.deepcopy(self.heads[task])})
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out

    def extra_repr(self) -> str:
        return (
            f"tasks={list(self.task_names)}, nodes={list(self.node_counts)}, "
            f"temperature={self.temperature}, anneal={self.anneal}, hard={self.hard}"
        )
