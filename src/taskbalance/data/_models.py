"""Default models of the built-in benchmarks (built from :mod:`taskbalance.models` on demand).

Kept apart from the generators so that generating data never imports the model code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn


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
) -> Any:
    """:class:`~taskbalance.models.SegNetBackbone` shared by dense heads (task -> channels);
    tasks in ``normalize`` get a :class:`~taskbalance.models.NormalHead` (unit vectors)."""
    from taskbalance.models import DenseHead, MultiTaskModel, NormalHead, SegNetBackbone

    backbone = SegNetBackbone(in_channels, width=width, depth=depth)
    c = backbone.out_channels
    modules = {
        name: NormalHead(c, channels) if name in normalize else DenseHead(c, channels)
        for name, channels in heads.items()
    }
    return MultiTaskModel(backbone, modules, task_names=list(heads))


def _event_head(in_channels: int, num_classes: int, hidden: int) -> nn.Module:
    """conv -> ReLU -> global max-pool -> MLP: an event is a local pattern anywhere in the clip."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


def clip_model(
    in_channels: int,
    image_size: tuple[int, int],
    num_segments: int,
    num_events: int,
    width: int = 24,
) -> Any:
    """TTNet-like model over stacked frames: a SegNet-style encoder-decoder (full-resolution
    features) shared by a :class:`~taskbalance.models.CoordinateHead` (``ball``), a
    :class:`~taskbalance.models.DenseHead` (``table``) and an event classifier (``events``)."""
    from taskbalance.models import CoordinateHead, DenseHead, MultiTaskModel, SegNetBackbone

    height, img_width = image_size
    backbone = SegNetBackbone(in_channels, width=width, depth=3)
    c = backbone.out_channels
    heads = {
        "ball": CoordinateHead(c, img_width, height, hidden=32, from_map=True),
        "table": DenseHead(c, num_segments),
        "events": _event_head(c, num_events, hidden=32),
    }
    return MultiTaskModel(backbone, heads, task_names=list(heads))
