"""Multi-Task Attention Network (Liu, Johns, Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, https://arxiv.org/abs/1803.10704).

A shared network (the SegNet of the paper, or any *staged* network, see below) learns a global
feature pool; each task reads from it through its own soft-attention modules, one per stage j.
With ``u^(j)`` the output of stage j's first convolution and ``p^(j)`` that of its last:

    a_i^(1) = g_i^(1)(u^(1))
    a_i^(j) = g_i^(j)([u^(j) ‖ f^(j)(â_i^(j-1))])                       (j >= 2)
    â_i^(j) = a_i^(j) ⊙ p^(j)

``g_i^(j)`` = conv1x1-BN-ReLU-conv1x1-BN-sigmoid (so masks lie in (0, 1)), task-specific;
``f^(j)`` = conv3x3-BN-ReLU followed by pooling (encoder) or preceded by upsampling (decoder) to
the resolution of stage j. Task i's head reads ``â_i`` of the last stage.

In the paper's notation ``f^(j)`` carries no task index and the authors' code shares it across
tasks, so by default (``share_attention_convs=True``) the f blocks are *shared* parameters;
``share_attention_convs=False`` gives every task its own f blocks (then task parameters).

Staged networks provide ``stage_channels: list[(C_u, C_p)]`` and ``forward_stages(x) ->
list[(u, p)]`` (:class:`~taskbalance.models.SegNetBackbone`, :class:`~taskbalance.models.SmallCNN`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from taskbalance.models.backbones import ConvBNReLU, resize_to
from taskbalance.models.multitask import (
    MultiTaskModel,
    MultiTaskNetwork,
    _match_heads,
    reset_parameters,
)

__all__ = ["AttentionModule", "MTAN", "LastStage"]


class AttentionModule(nn.Sequential):
    """MTAN's attention mask g: conv1x1 -> BN -> ReLU -> conv1x1 -> BN -> sigmoid, values in
    (0, 1), ``[B, in_channels, H, W] -> [B, out_channels, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
            nn.Sigmoid(),
        )


class LastStage(nn.Module):
    """Wraps a staged network so ``forward`` returns ``p`` of its last stage (the map MTAN's heads
    read); used for MTAN's single-task baselines."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        stages: list[tuple[Tensor, Tensor]] = self.backbone.forward_stages(x)  # type: ignore[operator]
        return stages[-1][1]


class MTAN(MultiTaskNetwork):
    """MTAN: a shared staged network plus per-task attention modules at every stage.

    Args:
        backbone: a staged network (``stage_channels``, ``forward_stages``), e.g.
            ``SegNetBackbone(3)`` or ``SmallCNN(1)``.
        heads: task name -> head reading the task's attended last-stage map
            ``[B, C_p(last), H, W]`` (e.g. :class:`~taskbalance.models.DenseHead`).
        share_attention_convs: share the f blocks across tasks (paper's code, default) or not.
        record_masks: keep the (detached) attention masks of the last forward in
            ``attention_masks[task]`` (one tensor per stage), for inspection and plots.
        task_names: optional task order.

    Parameter split: ``shared_parameters()`` = the shared network (+ the f blocks when shared);
    ``task_parameters(t)`` = task t's attention modules g (+ its f blocks when not shared) and
    head.

    **Rep mode is not supported**: the heads read task-specific attended features and every
    stage of the shared network feeds the attention modules, so there is no single shared
    representation; ``features`` is ``None`` (``supports_rep_mode = False``). Use
    ``mode="param"``.
    """

    supports_rep_mode = False

    def __init__(
        self,
        backbone: nn.Module,
        heads: Mapping[str, nn.Module],
        *,
        share_attention_convs: bool = True,
        record_masks: bool = False,
        task_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        stage_channels = getattr(backbone, "stage_channels", None)
        if stage_channels is None or not callable(getattr(backbone, "forward_stages", None)):
            raise TypeError(
                f"MTAN needs a staged backbone with `stage_channels` and `forward_stages(x)` "
                f"(e.g. SegNetBackbone or SmallCNN); got {type(backbone).__name__}"
            )
        stage_channels = [(int(cu), int(cp)) for cu, cp in stage_channels]
        if not stage_channels:
            raise ValueError("the backbone has no stages")
        names, ordered = _match_heads(heads, task_names)
        self.task_names = names
        self.backbone = backbone
        self.stage_channels = stage_channels
        self.share_attention_convs = bool(share_attention_convs)
        self.record_masks = bool(record_masks)
        self.attention_masks: dict[str, list[Tensor]] = {}

        def f_blocks() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    ConvBNReLU(stage_channels[j - 1][1], stage_channels[j][0])
                    for j in range(1, len(stage_channels))
                ]
            )

        if self.share_attention_convs:
            self.shared_f: nn.ModuleList | None = f_blocks()
            self.task_f: nn.ModuleDict | None = None
        else:
            self.shared_f = None
            self.task_f = nn.ModuleDict({t: f_blocks() for t in names})
        self.attention = nn.ModuleDict()
        for t in names:
            self.attention[t] = nn.ModuleList(
                [
                    AttentionModule(cu if j == 0 else 2 * cu, cp)
                    for j, (cu, cp) in enumerate(stage_channels)
                ]
            )
        self.heads = nn.ModuleDict(ordered)
        self._check_partition()

    def shared_modules(self) -> list[nn.Module]:
        return [self.backbone] + ([self.shared_f] if self.shared_f is not None else [])

    def task_modules(self, task: str) -> list[nn.Module]:
        self._check_task(task)
        mods: list[nn.Module] = [self.attention[task]]
        if self.task_f is not None:
            mods.append(self.task_f[task])
        mods.append(self.heads[task])
        return mods

    @property
    def features(self) -> None:
        """Always ``None``: MTAN has no single shared representation (no rep mode)."""
        return None

    def _f_blocks(self, task: str) -> nn.ModuleList:
        if self.shared_f is not None:
            return self.shared_f
        assert self.task_f is not None
        return cast(nn.ModuleList, self.task_f[task])

    @staticmethod
    def _carry(f: nn.Module, a: Tensor, size: tuple[int, int]) -> Tensor:
        """f^(j) with the resize to stage j: conv then pool when shrinking, upsample then conv."""
        if a.shape[-2] > size[0] or a.shape[-1] > size[1]:
            return resize_to(f(a), size)
        return f(resize_to(a, size))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stages: list[tuple[Tensor, Tensor]] = self.backbone.forward_stages(x)  # type: ignore[operator]
        out: dict[str, Tensor] = {}
        masks: dict[str, list[Tensor]] = {}
        for task in self.task_names:
            g = cast(nn.ModuleList, self.attention[task])
            f = self._f_blocks(task)
            a_hat: Tensor | None = None
            task_masks: list[Tensor] = []
            for j, (u, p) in enumerate(stages):
                if a_hat is None:
                    inp = u
                else:
                    carried = self._carry(f[j - 1], a_hat, (u.shape[-2], u.shape[-1]))
                    inp = torch.cat([u, carried], dim=1)
                mask = g[j](inp)
                if self.record_masks:
                    task_masks.append(mask.detach())
                a_hat = mask * p
            out[task] = self.heads[task](a_hat)
            if self.record_masks:
                masks[task] = task_masks
        if self.record_masks:
            self.attention_masks = masks
        return out

    def single_task_copies(self, reinitialize: bool = False) -> dict[str, MultiTaskModel]:
        """Single-task baselines: the shared network (last-stage map, no attention) and one head."""
        out: dict[str, MultiTaskModel] = {}
        for task in self.task_names:
            net = MultiTaskModel(
                LastStage(copy.deepcopy(self.backbone)), {task: copy.deepcopy(self.heads[task])}
            )
            if reinitialize:
                reset_parameters(net)
            out[task] = net
        return out
