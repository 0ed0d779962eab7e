"""ResNet-18/34 in plain torch (no torchvision), for the protocols that train them from scratch.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016): BasicBlocks of two 3x3
convolutions with BatchNorm and an identity (or 1x1 strided projection) shortcut; stages of
64-128-256-512 channels, strides 1-2-2-2. Two stems:

* ``"imagenet"``: 7x7 stride-2 convolution and 3x3 stride-2 max-pooling (output stride 32), the
  layout and parameter names of torchvision's ``resnet18`` (so its state dicts load);
* ``"cifar"``: one 3x3 stride-1 convolution, no pooling (output stride 8) - the small-image
  ResNet-18 that Sener & Koltun (NeurIPS 2018) use as the shared network for 64 x 64 CelebA.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from taskbalance.models.backbones import ResNetBackbone

__all__ = ["BLOCKS_PER_STAGE", "BasicBlock", "basic_resnet", "celeba_resnet18"]

#: Blocks per stage of the BasicBlock ResNets.
BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEMS = ("imagenet", "cifar")


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 strided
    convolution + BatchNorm (``downsample``) when the shape changes, else the identity."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _stem(kind: str, in_channels: int) -> nn.Sequential:
    if kind == "imagenet":
        layers = [
            ("conv1", nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu", nn.ReLU(inplace=True)),
            ("maxpool", nn.MaxPool2d(3, 2, padding=1)),
        ]
    else:
        layers = [
            ("conv1", nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu", nn.ReLU(inplace=True)),
        ]
    return nn.Sequential(OrderedDict(layers))


def basic_resnet(depth: int = 18, stem: str = "imagenet", in_channels: int = 3) -> ResNetBackbone:
    """A ResNet-18 or -34 feature extractor ``stem, layer1..layer4`` without torchvision.

    Output ``[B, 512, H/s, W/s]``; ``s`` (``output_stride``) is 32 with the ImageNet stem and 8
    with the CIFAR stem. Weights use torch's default initialisation, BatchNorm weights 1.

    Raises:
        ValueError: ``depth`` not 18 or 34, an unknown ``stem``, or ``in_channels < 1``.
    """
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"basic_resnet depth must be 18 or 34, got {depth!r}")
    if stem not in STEMS:
        raise ValueError(f"basic_resnet stem must be one of {STEMS}, got {stem!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    stages: OrderedDict[str, nn.Module] = OrderedDict([("stem", _stem(stem, in_channels))])
    c_in = 64
    for k, (channels, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS_PER_STAGE[depth])):
        stride = 1 if k == 0 else 2
        layers = [BasicBlock(c_in, channels, stride)]
        layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
        stages[f"layer{k + 1}"] = nn.Sequential(*layers)
        c_in = channels
    backbone = ResNetBackbone(stages)
    backbone.out_channels = 512
    backbone.output_stride = 32 if stem == "imagenet" else 8
    return backbone


def celeba_resnet18(tasks: list[str] | tuple[str, ...], pool: int = 2):
    """The CelebA network of Sener & Koltun (NeurIPS 2018; the paper's code,
    ``multi_task/models/multi_faces_resnet.py``): the CIFAR-stem ResNet-18 shared, its
    ``[B, 512, 8, 8]`` output (64 x 64 inputs) average-pooled to ``pool x pool`` and flattened
    (2048 features), and one linear layer ``2048 -> 2`` per attribute.

    The pooling is adaptive, so smaller images (CPU smoke runs) give the same feature size.
    """
    from taskbalance.models.multitask import MultiTaskModel

    shared = nn.Sequential(
        OrderedDict(
            [
                ("resnet", basic_resnet(18, stem="cifar")),
                ("pool", nn.AdaptiveAvgPool2d(pool)),
                ("flatten", nn.Flatten()),
            ]
        )
    )
    features = 512 * pool * pool
    return MultiTaskModel(shared, {t: nn.Linear(features, 2) for t in tasks})
