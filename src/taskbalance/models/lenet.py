"""The LeNet-style shared network and heads of the MultiMNIST experiments of Sener & Koltun
(NeurIPS 2018, https://arxiv.org/abs/1810.04650; layer sizes from the paper's code,
``multi_task/models/multi_lenet.py``).

Shared: conv 5x5 (1 -> 10) -> max-pool 2 -> ReLU -> conv 5x5 (10 -> 20) -> channel dropout ->
max-pool 2 -> ReLU -> flatten (320 for 28 x 28 inputs) -> linear 320 -> 50 -> ReLU.
Each task: linear 50 -> 50 -> ReLU -> dropout -> linear 50 -> 10 (logits).

The paper's code draws one dropout mask per step and shares it across the tasks' passes; here
each forward draws its own (``nn.Dropout2d`` / ``nn.Dropout``, p = 0.5).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["LeNetHead", "LeNetShared", "lenet_multimnist"]


class LeNetShared(nn.Sequential):
    """The shared LeNet of Sener & Koltun: ``[B, 1, 28, 28] -> [B, 50]``."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, dropout: float = 0.5) -> None:
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNetShared needs image_size >= 16, got {image_size!r}")
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 10, 5)),
                    ("pool1", nn.MaxPool2d(2)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(10, 20, 5)),
                    ("drop", nn.Dropout2d(dropout)),
                    ("pool2", nn.MaxPool2d(2)),
                    ("relu2", nn.ReLU()),
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(20 * side * side, 50)),
                    ("relu3", nn.ReLU()),
                ]
            )
        )
        self.out_dim = 50


class LeNetHead(nn.Sequential):
    """A task's head: ``[B, 50] -> [B, num_classes]`` logits."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Linear(50, 50), nn.ReLU(), nn.Dropout(dropout), nn.Linear(50, num_classes)
        )


def lenet_multimnist(tasks: tuple[str, ...] = ("left", "right"), dropout: float = 0.5):
    """``MultiTaskModel`` of the shared LeNet and one :class:`LeNetHead` per task."""
    from taskbalance.models.multitask import MultiTaskModel

    return MultiTaskModel(LeNetShared(dropout=dropout), {t: LeNetHead(10, dropout) for t in tasks})
