"""Default models of the built-in benchmarks (built from :mod:`taskbalance.models` on demand).

Kept apart from the generators so that generating data never imports the model code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def small_cnn_classifier(
    in_channels: int,
    image_size: tuple[int, int],
    heads: Mapping[str, int],
    width: int = 32,
    hidden: int = 64,
) -> Any:
    """:class:`~taskbalance.models.SmallCNN` (two conv blocks, 4x4 pooled layout kept) shared by
    one :class:`~taskbalance.models.ClassificationHead` per task (task -> number of classes)."""
    from taskbalance.models import ClassificationHead, MultiTaskModel, SmallCNN

    del image_size  # adaptive pooling makes the backbone size-agnostic
    backbone = SmallCNN(in_channels, width=width, out_dim=hidden, num_blocks=2, pool_size=4)
    return MultiTaskModel(
        backbone,
        {name: ClassificationHead(hidden, classes) for name, classes in heads.items()},
        task_names=list(heads),
    )


def segnet_dense(
    in_channels: int,
    heads: Mapping[str, int],
    normalize: Sequence[str] = (),
    width: int = 16,
    depth: int = 3,
    convs_per_stage: int | Sequence[int] = 2,
    architecture: str = "segnet",
) -> Any:
    """:class:`~taskbalance.models.SegNetBackbone` shared by dense heads (task -> channels);
    tasks in ``normalize`` get a :class:`~taskbalance.models.NormalHead` (unit vectors).
    ``architecture="mtan"``: MTAN's task attention on the same SegNet (Liu et al., CVPR 2019),
    the heads reading each task's attended features."""
    from taskbalance.models import MTAN, DenseHead, MultiTaskModel, NormalHead, SegNetBackbone

    backbone = SegNetBackbone(
        in_channels, width=width, depth=depth, convs_per_stage=convs_per_stage
    )
    c = backbone.out_channels
    modules = {
        name: NormalHead(c, channels) if name in normalize else DenseHead(c, channels)
        for name, channels in heads.items()
    }
    if architecture == "mtan":
        return MTAN(backbone, modules, task_names=list(heads))
    return MultiTaskModel(backbone, modules, task_names=list(heads))


class _FramesAndFeatures(nn.Module):
    """A SegNet over the stacked frames whose dense features are concatenated with the frames
    themselves (a U-Net-style input skip): heads see both the learned features and the raw
    frame-to-frame motion of the ball, which the event head needs."""

    def __init__(self, segnet: Any, in_channels: int) -> None:
        super().__init__()
        self.segnet = segnet
        self.in_channels = in_channels
        self.out_channels = int(segnet.out_channels) + in_channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.segnet(x), x], dim=1)


class _EventHead(nn.Module):
    """Event classifier over dense clip features: three conv-BN-ReLU layers (dilations 1, 2, 4,
    so each position sees the ball's motion across the stacked frames, about +-7 pixels), then a
    learned spatial attention pooling (softmax over positions of a 1x1 score) next to a global
    max-pool, then an MLP.

    An event is a small, local motion pattern of a ball a few pixels wide: a plain global max-pool
    of unnormalised features is dominated by the static scene (table edges, net) and passes its
    gradient to those positions only, so the head never finds the ball and predicts the class
    prior. The attention pooling lets it learn where to look (the ball region), as TTNet's event
    stage looks at a crop around the detected ball.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for dilation in (1, 2, 4):
            layers += [
                nn.Conv2d(c_in, hidden, kernel_size=3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
            c_in = hidden
        self.local = nn.Sequential(*layers)
        self.score = nn.Conv2d(hidden, 1, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.local(x)
        attention = torch.softmax(self.score(h).flatten(2), dim=-1)  # [B, 1, H*W]
        attended = (h.flatten(2) * attention).sum(-1)
        peak = h.amax(dim=(2, 3))
        return self.classifier(torch.cat([attended, peak], dim=1))


def clip_model(
    in_channels: int,
    image_size: tuple[int, int],
    num_segments: int,
    num_events: int,
    width: int = 24,
) -> Any:
    """TTNet-like model over stacked frames: a SegNet-style encoder-decoder (full-resolution
    features, concatenated with the input frames) shared by a
    :class:`~taskbalance.models.CoordinateHead` (``ball``), a
    :class:`~taskbalance.models.DenseHead` (``table``) and an event classifier (``events``)."""
    from taskbalance.models import CoordinateHead, DenseHead, MultiTaskModel, SegNetBackbone

    height, img_width = image_size
    backbone = _FramesAndFeatures(SegNetBackbone(in_channels, width=width, depth=3), in_channels)
    c = backbone.out_channels
    heads = {
        "ball": CoordinateHead(c, img_width, height, hidden=32, from_map=True),
        "table": DenseHead(c, num_segments),
        "events": _EventHead(c, num_events, hidden=32),
    }
    return MultiTaskModel(backbone, heads, task_names=list(heads))
