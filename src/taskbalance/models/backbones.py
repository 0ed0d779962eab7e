"""Shared backbones: a small CNN, a SegNet-style encoder-decoder, torchvision ResNets.

:class:`SmallCNN` and :class:`SegNetBackbone` also implement the *staged* interface that
:class:`~taskbalance.models.MTAN` attaches its attention modules to: ``stage_channels`` (channels
of ``(u, p)`` per stage) and ``forward_stages(x) -> list[(u, p)]``, where ``u`` is the output of a
stage's first convolution and ``p`` that of its last (Liu et al., CVPR 2019, Sec. 3.2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from taskbalance.validation import is_int

__all__ = [
    "ConvBNReLU",
    "SmallCNN",
    "SegNetBackbone",
    "ResNetBackbone",
    "resnet_backbone",
    "RESNET_NAMES",
    "VISION_EXTRA_HINT",
]

VISION_EXTRA_HINT = 'pip install "taskbalance[vision]"'

#: ResNet variants :func:`resnet_backbone` accepts -> channels of their last stage.
RESNET_NAMES: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "resnext50_32x4d": 2048,
    "resnext101_32x8d": 2048,
    "wide_resnet50_2": 2048,
    "wide_resnet101_2": 2048,
}
_BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")


def _check_positive(name: str, value: int) -> None:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (padding 1, no bias) -> BatchNorm -> ReLU, keeping the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels


class SmallCNN(nn.Sequential):
    """A small CNN for small images (digits, toy scenes): ``num_blocks`` x (conv-BN-ReLU-maxpool),
    adaptive average pooling to ``pool_size`` x ``pool_size``, flatten, linear -> ReLU.

    Input ``[B, in_channels, H, W]`` (H, W >= 2**num_blocks), output ``[B, out_dim]``. Block i
    has ``width * 2**i`` channels. Being an ``nn.Sequential`` of named layers (``block1``, ...,
    ``pool``, ``fc``), it can be split at a branch point with
    :meth:`MultiTaskModel.from_layers <taskbalance.models.MultiTaskModel.from_layers>`.
    ``pool_size > 1`` keeps coarse spatial layout (which digit is on the left, where the ball is).

    As a staged network (for MTAN) its stages are the conv blocks; ``u = p`` is the block's
    conv-BN-ReLU output before pooling.
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 16,
        out_dim: int = 64,
        num_blocks: int = 2,
        pool_size: int = 4,
    ) -> None:
        for name, value in (
            ("in_channels", in_channels),
            ("width", width),
            ("out_dim", out_dim),
            ("num_blocks", num_blocks),
            ("pool_size", pool_size),
        ):
            _check_positive(name, value)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = [width * 2**i for i in range(num_blocks)]
        c_in = in_channels
        for i, c in enumerate(channels):
            layers[f"block{i + 1}"] = nn.Sequential(
                OrderedDict([("conv", ConvBNReLU(c_in, c)), ("pool", nn.MaxPool2d(2))])
            )
            c_in = c
        layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())
        layers["fc"] = nn.Sequential(
            nn.Linear(c_in * pool_size * pool_size, out_dim), nn.ReLU(inplace=True)
        )
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_dim = out_dim
        self.num_blocks = num_blocks
        self.stage_channels: list[tuple[int, int]] = [(c, c) for c in channels]

    def forward_stages(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(u, p)`` per conv block (before its pooling); the last one is ``[B, C, H/2^(n-1),
        W/2^(n-1)]``."""
        out: list[tuple[Tensor, Tensor]] = []
        for i in range(self.num_blocks):
            block = cast(nn.Sequential, self[i])
            p = block[0](x)
            out.append((p, p))
            x = block[1](p)
        return out


class SegNetBackbone(nn.Module):
    """SegNet-style encoder-decoder (Badrinarayanan et al., TPAMI 2017) returning a dense
    feature map ``[B, out_channels, H, W]`` at input resolution.

    This is the shared network of the NYUv2 protocol of MTAN (Liu et al., CVPR 2019), reused by
    Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS 2023): encoder stages of
    3x3 conv-BN-ReLU layers, each followed by 2x2 max-pooling whose indices the mirrored decoder
    stage uses for max-unpooling. :meth:`mtan_nyuv2` builds that configuration (5 stages,
    64-128-256-512-512 channels, 2-2-3-3-3 convolutions). The defaults are tiny (3 stages,
    8-16-32 channels) so CPU tests are fast.

    Stage i of the encoder has ``width * min(2**i, max_multiplier)`` channels. Decoder stage k
    (deepest first) unpools, then maps the channels of encoder stage k to those of stage k-1
    (stage 0 keeps its channels), so the output has ``width`` channels. Any input with H, W >=
    2**depth works (pool sizes are remembered for unpooling).

    Staged interface (for MTAN): ``2 * depth`` stages, the encoder stages then the decoder stages;
    ``u`` is a stage's first conv output and ``p`` its last (before pooling in the encoder, after
    unpooling and convolutions in the decoder).
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 8,
        depth: int = 3,
        convs_per_stage: int | Sequence[int] = 2,
        max_multiplier: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("width", width),
            ("depth", depth),
            ("max_multiplier", max_multiplier),
        ):
            _check_positive(name, value)
        if isinstance(convs_per_stage, int):
            convs = [convs_per_stage] * depth
        else:
            convs = list(convs_per_stage)
            if len(convs) != depth:
                raise ValueError(
                    f"convs_per_stage has {len(convs)} entries but depth={depth}; give one per "
                    "stage"
                )
        for n in convs:
            _check_positive("convs_per_stage entries", n)
        channels = [width * min(2**i, max_multiplier) for i in range(depth)]
        self.in_channels = in_channels
        self.out_channels = channels[0]
        self.depth = depth
        self.channels = channels
        self.encoder = nn.ModuleList()
        c_in = in_channels
        for c, n in zip(channels, convs, strict=True):
            self.encoder.append(
                nn.ModuleList([ConvBNReLU(c_in, c)] + [ConvBNReLU(c, c) for _ in range(n - 1)])
            )
            c_in = c
        self.decoder = nn.ModuleList()
        for k in reversed(range(depth)):
            c_out = channels[max(k - 1, 0)]
            n = convs[k]
            self.decoder.append(
                nn.ModuleList(
                    [ConvBNReLU(channels[k], c_out)]
                    + [ConvBNReLU(c_out, c_out) for _ in range(n - 1)]
                )
            )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        enc = [(c, c) for c in channels]
        dec = [(channels[max(k - 1, 0)],) * 2 for k in reversed(range(depth))]
        self.stage_channels: list[tuple[int, int]] = enc + dec  # type: ignore[assignment]

    @classmethod
    def mtan_nyuv2(cls, in_channels: int = 3) -> SegNetBackbone:
        """The SegNet of MTAN's NYUv2 experiments: widths 64-128-256-512-512, 2-2-3-3-3 convs."""
        return cls(in_channels, width=64, depth=5, convs_per_stage=(2, 2, 3, 3, 3))

    @staticmethod
    def _run(stage: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        layers = list(stage.children())
        u = layers[0](x)
        p = u
        for layer in layers[1:]:
            p = layer(p)
        return u, p

    def forward_stages(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(u, p)`` of the ``2 * depth`` stages (encoder, then decoder)."""
        min_side = 2**self.depth
        if x.dim() != 4 or x.shape[-1] < min_side or x.shape[-2] < min_side:
            raise ValueError(
                f"SegNetBackbone(depth={self.depth}) needs input [B, C, H, W] with H, W >= "
                f"{min_side}; got shape {tuple(x.shape)}"
            )
        out: list[tuple[Tensor, Tensor]] = []
        indices: list[Tensor] = []
        sizes: list[tuple[int, int]] = []
        for stage in self.encoder:
            u, p = self._run(stage, x)
            out.append((u, p))
            sizes.append((p.shape[-2], p.shape[-1]))
            x, idx = self.pool(p)
            indices.append(idx)
        for j, stage in enumerate(self.decoder):
            k = self.depth - 1 - j
            x = self.unpool(x, indices[k], output_size=sizes[k])
            u, x = self._run(stage, x)
            out.append((u, x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Dense features ``[B, out_channels, H, W]``."""
        return self.forward_stages(x)[-1][1]


class ResNetBackbone(nn.Sequential):
    """A torchvision ResNet without its pooling and classifier: ``stem, layer1..layer4``.

    Output ``[B, out_channels, H/s, W/s]`` with ``s = output_stride`` (32, or 8 when dilated).
    Build it with :func:`resnet_backbone`.
    """

    out_channels: int
    output_stride: int


def resnet_backbone(
    name: str = "resnet18",
    dilated: bool = False,
    pretrained: bool = False,
) -> ResNetBackbone:
    """A torchvision ResNet as a dense feature extractor (needs the ``vision`` extra).

    ``dilated=True`` gives the dilated ResNet of the DeepLab protocol (Chen et al., TPAMI 2018)
    used in multi-task segmentation benchmarks: ``replace_stride_with_dilation=[False, True,
    True]``, output stride 8. Only bottleneck ResNets (resnet50 and deeper) support dilation.
    ``pretrained=True`` loads torchvision's default ImageNet weights (downloads them once).

    Raises:
        ValueError: unknown ``name``, or ``dilated`` with resnet18/resnet34.
        ImportError: torchvision is not installed (install ``taskbalance[vision]``).
    """
    if name not in RESNET_NAMES:
        raise ValueError(f"unknown ResNet {name!r}; valid names are {sorted(RESNET_NAMES)}")
    if dilated and name in _BASIC_BLOCK_RESNETS:
        raise ValueError(
            f"{name} uses BasicBlocks, which torchvision cannot dilate; use dilated=True with "
            f"resnet50 or deeper, or dilated=False"
        )
    try:
        from torchvision import models as tv_models
    except ImportError as err:
        raise ImportError(
            f"resnet_backbone({name!r}) needs torchvision, which is not installed; install the "
            f"vision extra: {VISION_EXTRA_HINT}"
        ) from err
    except Exception as err:  # torchvision present but incompatible with this torch
        raise ImportError(
            f"torchvision is installed but failed to import ({err}); install a torchvision that "
            f"matches your torch, e.g. {VISION_EXTRA_HINT}"
        ) from err
    kwargs: dict[str, object] = {}
    if dilated:
        kwargs["replace_stride_with_dilation"] = [False, True, True]
    weights = "DEFAULT" if pretrained else None
    net = tv_models.get_model(name, weights=weights, **kwargs)
    stem = nn.Sequential(
        OrderedDict(
            [("conv1", net.conv1), ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool)]
        )
    )
    backbone = ResNetBackbone(
        OrderedDict(
            [
                ("stem", stem),
                ("layer1", net.layer1),
                ("layer2", net.layer2),
                ("layer3", net.layer3),
                ("layer4", net.layer4),
            ]
        )
    )
    backbone.out_channels = RESNET_NAMES[name]
    backbone.output_stride = 8 if dilated else 32
    return backbone


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a feature map to ``size``: adaptive max-pool to shrink, bilinear to enlarge."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_max_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
