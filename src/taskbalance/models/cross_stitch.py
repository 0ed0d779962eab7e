"""Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task
Learning", CVPR 2016, https://arxiv.org/abs/1604.03539).

One network copy (*column*) per task. After chosen layers a cross-stitch unit replaces each
column's activation by a learned linear combination of all columns' activations:

    x̃_i = Σ_j α_ij x_j        (i, j = 1..T)

The paper uses T = 2 and initialises α with α_S = 0.9 on the diagonal and α_D = 0.1 off it
(rows sum to 1, so the initial network is a convex mix that favours each task's own column).
For T tasks we keep α_S on the diagonal and spread α_D over the T-1 other columns
(``α_D / (T-1)`` each), so every row still sums to α_S + α_D = 1 and T = 2 gives the paper's
values. The paper also notes the units learn better with a larger learning rate than the
columns (they scale it by 10^2-10^3): give ``model.shared_parameters()`` its own parameter group.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from taskbalance.models.multitask import (
    MultiTaskModel,
    MultiTaskNetwork,
    _match_heads,
    reset_parameters,
)
from taskbalance.validation import is_int

__all__ = ["CrossStitchUnit", "CrossStitchNetwork", "infer_out_channels"]


#: Leaf modules whose output has the channels of their input.
_CHANNEL_PRESERVING: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_SAME = -1  # sentinel: the layer keeps the channels of its input


def _layer_channels(layer: nn.Module) -> int | None:
    """Output channels of ``layer``, ``_SAME`` if it keeps its input's, ``None`` if unknown."""
    leaves = [m for m in layer.modules() if next(m.children(), None) is None]
    for leaf in reversed(leaves):
        for attr in ("out_channels", "out_features", "num_features"):
            value = getattr(leaf, attr, None)
            if is_int(value):
                return value
        if not isinstance(leaf, _CHANNEL_PRESERVING):
            return None
    return _SAME


def infer_out_channels(layers: Sequence[nn.Module], index: int) -> int | None:
    """Channels (dim 1) of the output of ``layers[index]``, read from the last Conv / Linear /
    BatchNorm leaf (``out_channels`` / ``out_features`` / ``num_features``), looking back through
    channel-preserving layers (activations, dropout, pooling); ``None`` if it cannot tell (e.g.
    after a ``Flatten``)."""
    for i in range(index, -1, -1):
        c = _layer_channels(layers[i])
        if c != _SAME:
            return c
    return None


def _measure_channels(
    layers: Sequence[nn.Module], after: Sequence[int], example_input: Tensor
) -> list[int | None]:
    """Channels (dim 1) of the outputs of ``layers[i]`` for i in ``after``, by a no-grad pass in
    eval mode on ``example_input`` (train/eval state restored)."""
    states = [layer.training for layer in layers]
    wanted = set(after)
    found: dict[int, int | None] = {}
    try:
        with torch.no_grad():
            h = example_input
            for i, layer in enumerate(layers):
                layer.eval()
                h = layer(h)
                if i in wanted:
                    found[i] = int(h.shape[1]) if h.dim() >= 2 else None
    finally:
        for layer, state in zip(layers, states, strict=True):
            layer.train(state)
    return [found[i] for i in after]


class CrossStitchUnit(nn.Module):
    """Learned T x T mixing of the activations of T columns.

    Args:
        num_tasks: T.
        num_channels: channels C of the activations (dim 1); required when ``per_channel``.
        per_channel: one T x T matrix per channel (``alpha`` of shape ``[C, T, T]``, the default,
            finer than the paper's per-layer form and common in re-implementations) or one per
            layer (``[T, T]``).
        alpha_self: initial diagonal value α_S (paper: 0.9).
        alpha_other: initial *total* off-diagonal mass α_D per row (paper: 0.1), split equally
            over the T-1 other tasks.

    ``forward(xs)`` takes a list of T tensors of one shape ``[B, C, ...]`` and returns the list
    of the T mixed tensors.
    """

    def __init__(
        self,
        num_tasks: int,
        num_channels: int | None = None,
        per_channel: bool = True,
        alpha_self: float = 0.9,
        alpha_other: float = 0.1,
    ) -> None:
        super().__init__()
        if not is_int(num_tasks) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        if per_channel and (
            not is_int(num_channels) or num_channels < 1
        ):
            raise ValueError(
                f"a per-channel cross-stitch unit needs num_channels (positive int), got "
                f"{num_channels!r}"
            )
        self.num_tasks = num_tasks
        self.num_channels = num_channels
        self.per_channel = per_channel
        self.alpha_self = float(alpha_self)
        self.alpha_other = float(alpha_other)
        shape = (num_channels, num_tasks, num_tasks) if per_channel else (num_tasks, num_tasks)
        self.alpha = nn.Parameter(torch.empty(shape))  # type: ignore[arg-type]
        self.reset_parameters()

    def initial_matrix(self) -> Tensor:
        """The T x T initialisation: α_S on the diagonal, α_D / (T-1) elsewhere."""
        t = self.num_tasks
        off = self.alpha_other / (t - 1) if t > 1 else 0.0
        mat = torch.full((t, t), off)
        mat.fill_diagonal_(self.alpha_self)
        return mat

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.copy_(self.initial_matrix().expand_as(self.alpha))

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        if len(xs) != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} activations, got {len(xs)}")
        stacked = torch.stack(list(xs))  # [T, B, C, ...]
        if self.per_channel:
            if stacked.dim() < 3 or stacked.shape[2] != self.num_channels:
                raise ValueError(
                    f"cross-stitch unit built for {self.num_channels} channels got activations "
                    f"of shape {tuple(xs[0].shape)} (channels are dim 1)"
                )
            mixed = torch.einsum("cij,jbc...->ibc...", self.alpha, stacked)
        else:
            mixed = torch.tensordot(self.alpha, stacked, dims=([1], [0]))
        return list(mixed.unbind(0))

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, num_channels={self.num_channels}, "
            f"per_channel={self.per_channel}"
        )


class CrossStitchNetwork(MultiTaskNetwork):
    """Cross-stitch network: T columns (copies of one layer stack) joined by cross-stitch units.

    Args:
        layers: the single-task layer stack (a column); deep-copied once per task.
        heads: task name -> head applied to that task's column output.
        stitch_after: indices ``i`` of the layers after which a unit mixes the columns (default:
            after every layer but the last, as the paper does after each pooling / fc layer).
        channels: channels (dim 1) of the activations at each stitch; only needed for
            per-channel units. Default: measured by running ``example_input`` through the column
            if given, else read from the layers with :func:`infer_out_channels`.
        per_channel, alpha_self, alpha_other: see :class:`CrossStitchUnit`.
        reinitialize: re-initialise each column copy (default: all columns start equal).
        example_input: a small input batch, used only to measure ``channels``.
        columns_shared: count the columns as shared parameters (see below).
        task_names: optional task order.

    Parameter split (``columns_shared``): the units mix the columns, so task j's loss reaches
    *every* column whose mixing weight into column j is non-zero (all of them, from the
    initialisation on). A balancer must therefore treat the columns as shared: with
    ``columns_shared=True`` (default) ``shared_parameters()`` = units + all columns and
    ``task_parameters(t)`` = head t, so each task's gradient reaches only the shared parameters and
    its own head. ``columns_shared=False`` follows the paper's naming instead (shared = the units,
    task t = column t + head t); then a column also receives the other tasks' gradients, which
    a ``Balancer`` in param mode adds up unbalanced into the column's ``.grad``.

    **Rep mode is not supported**: there is no single representation shared by all heads (each
    head reads its own column), so ``features`` is ``None`` and ``supports_rep_mode`` is
    ``False``; use the balancer's ``mode="param"``.
    """

    supports_rep_mode = False

    def __init__(
        self,
        layers: Iterable[nn.Module],
        heads: Mapping[str, nn.Module],
        *,
        stitch_after: Sequence[int] | None = None,
        channels: Sequence[int | None] | None = None,
        per_channel: bool = True,
        alpha_self: float = 0.9,
        alpha_other: float = 0.1,
        reinitialize: bool = False,
        example_input: Tensor | None = None,
        columns_shared: bool = True,
        task_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        names, ordered = _match_heads(heads, task_names)
        self.task_names = names
        layer_list = list(layers)
        if not layer_list:
            raise ValueError("a cross-stitch network needs at least one layer per column")
        n = len(layer_list)
        after = list(range(n - 1)) if stitch_after is None else [int(i) for i in stitch_after]
        for i in after:
            if not 0 <= i < n:
                raise ValueError(f"stitch_after index {i} is out of range for {n} layers")
        if len(set(after)) != len(after):
            raise ValueError(f"stitch_after has repeated indices: {after}")
        after = sorted(after)
        if channels is not None and len(channels) != len(after):
            raise ValueError(
                f"channels has {len(channels)} entries, stitch_after has {len(after)}; give one "
                "per cross-stitch unit"
            )
        self.stitch_after = tuple(after)
        self.columns_shared = bool(columns_shared)
        self.columns = nn.ModuleDict()
        for task in names:
            column = nn.Sequential(*[copy.deepcopy(layer) for layer in layer_list])
            if reinitialize:
                reset_parameters(column)
            self.columns[task] = column
        if channels is None and per_channel and example_input is not None:
            channels = _measure_channels(layer_list, after, example_input)
        self.units = nn.ModuleDict()
        for k, i in enumerate(after):
            c = channels[k] if channels is not None else infer_out_channels(layer_list, i)
            if per_channel and c is None:
                raise ValueError(
                    f"cannot infer the output channels of layer {i} "
                    f"({type(layer_list[i]).__name__}); pass example_input=..., channels=[...] "
                    "or per_channel=False"
                )
            self.units[str(i)] = CrossStitchUnit(
                len(names),
                c,
                per_channel=per_channel,
                alpha_self=alpha_self,
                alpha_other=alpha_other,
            )
        self.heads = nn.ModuleDict(ordered)
        self._check_partition()

    def shared_modules(self) -> list[nn.Module]:
        return [self.units, self.columns] if self.columns_shared else [self.units]

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        if self.columns_shared:
            return [self.heads[task]]
        return [self.columns[task], self.heads[task]]

    @property
    def features(self) -> None:
        """Always ``None``: cross-stitch networks have no shared representation (no rep mode)."""
        return None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        xs = [x] * len(self.task_names)
        columns = [cast(nn.Sequential, self.columns[t]) for t in self.task_names]
        for i in range(len(columns[0])):
            xs = [col[i](h) for col, h in zip(columns, xs, strict=True)]
            key = str(i)
            if key in self.units:
                xs = self.units[key](xs)
        return {t: self.heads[t](h) for t, h in zip(self.task_names, xs, strict=True)}

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """Independent single-task networks: one column and its head each (no units)."""
        out: dict[str, MultiTaskModel] = {}
        for task in self.task_names:
            net = MultiTaskModel(
                copy.deepcopy(self.columns[task]), {task: copy.deepcopy(self.heads[task])}
            )
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out
