"""Task heads: classification, dense prediction (segmentation, depth, normals), 1-D coordinates."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from taskbalance.validation import is_int

__all__ = ["ClassificationHead", "DenseHead", "NormalHead", "CoordinateHead"]


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ClassificationHead(nn.Module):
    """Logits ``[B, num_classes]`` from a feature vector ``[B, in_dim]`` or a feature map
    ``[B, in_dim, H, W]`` (global-average-pooled first).

    ``hidden=None`` is one linear layer; ``hidden=h`` is linear -> ReLU -> dropout -> linear.
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_positive("in_dim", in_dim)
        _check_positive("num_classes", num_classes)
        _check_positive("hidden", hidden, allow_none=True)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        if hidden is None:
            self.mlp: nn.Module = nn.Linear(in_dim, num_classes)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() > 2:
            x = x.flatten(2).mean(dim=2)
        return self.mlp(x)


class DenseHead(nn.Module):
    """Per-pixel prediction ``[B, out_channels, H, W]`` from a feature map ``[B, in_channels, H,
    W]``: conv 3x3 -> ReLU -> conv 1x1, like MTAN's task-specific heads on the SegNet features
    (Liu et al., CVPR 2019). Use it for segmentation logits (``out_channels`` = classes), depth
    (1) and so on. ``hidden`` defaults to ``in_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("hidden", hidden, allow_none=True)
        hidden = in_channels if hidden is None else hidden
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(hidden, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"DenseHead expects a feature map [B, C, H, W], got {tuple(x.shape)}")
        return self.proj(self.relu(self.conv(x)))


class NormalHead(DenseHead):
    """Surface normals: a :class:`DenseHead` with 3 outputs, L2-normalised over channels, so
    every pixel's prediction is a unit vector (as in MTAN's NYUv2 normal head)."""

    def __init__(
        self, in_channels: int, out_channels: int = 3, hidden: int | None = None, eps: float = 1e-12
    ) -> None:
        super().__init__(in_channels, out_channels, hidden)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(super().forward(x), p=2.0, dim=1, eps=self.eps)


class CoordinateHead(nn.Module):
    """1-D logits over the x positions and over the y positions of an object, concatenated:
    output ``[B, width + height]`` (``[:, :width]`` for x, ``[:, width:]`` for y; see
    :meth:`split`). This is the ball-localisation output of TTNet (Voeikov et al., "TTNet:
    Real-time temporal and spatial video analysis of table tennis", CVPRW 2020), which predicts
    two 1-D distributions instead of a 2-D heat map.

    Two input kinds:

    - ``from_map=True`` (default): a feature map ``[B, in_dim, h, w]``. Two 1x1 conv layers give a
      per-pixel score for x and for y; the map is resized to ``height x width`` (bilinear) and
      reduced by a smooth maximum (log-mean-exp) over rows (for x) and over columns (for y). It
      has few parameters and keeps the spatial layout.
    - ``from_map=False``: a feature vector ``[B, in_dim]`` -> linear -> ReLU -> linear.

    Train with a cross-entropy (or a Gaussian-smoothed target) on each of the two parts.
    """

    def __init__(
        self, in_dim: int, width: int, height: int, hidden: int = 32, from_map: bool = True
    ) -> None:
        super().__init__()
        _check_positive("in_dim", in_dim)
        _check_positive("width", width)
        _check_positive("height", height)
        _check_positive("hidden", hidden)
        self.in_dim = in_dim
        self.width = width
        self.height = height
        self.from_map = from_map
        if from_map:
            self.net: nn.Sequential = nn.Sequential(
                nn.Conv2d(in_dim, hidden, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, 2, kernel_size=1),
            )
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width + height)
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.from_map:
            if x.dim() != 4:
                raise ValueError(
                    f"CoordinateHead(from_map=True) expects [B, C, H, W], got {tuple(x.shape)}; "
                    "use from_map=False for feature vectors"
                )
            scores = self.net(x)
            if scores.shape[-2:] != (self.height, self.width):
                scores = F.interpolate(
                    scores, size=(self.height, self.width), mode="bilinear", align_corners=False
                )
            # log-mean-exp: a smooth maximum that is exact for constant maps
            x_logits = scores[:, 0].logsumexp(dim=1) - math.log(self.height)
            y_logits = scores[:, 1].logsumexp(dim=2) - math.log(self.width)
            return torch.cat([x_logits, y_logits], dim=-1)
        if x.dim() != 2:
            raise ValueError(
                f"CoordinateHead(from_map=False) expects [B, in_dim], got {tuple(x.shape)}"
            )
        return self.net(x)

    def split(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_logits [B, width], y_logits [B, height])`` of an output of this head."""
        return logits[..., : self.width], logits[..., self.width :]
