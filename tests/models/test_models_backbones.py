"""Backbones: shapes, staged outputs, SegNet configuration, the optional torchvision path."""

from __future__ import annotations

import sys

import pytest
import torch

from taskbalance.models import SegNetBackbone, SmallCNN, resnet_backbone


def test_small_cnn_shapes_and_stages() -> None:
    net = SmallCNN(3, width=4, out_dim=10, num_blocks=3, pool_size=2)
    x = torch.randn(2, 3, 16, 16)
    assert net(x).shape == (2, 10)
    stages = net.forward_stages(x)
    assert [tuple(p.shape) for _, p in stages] == [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]
    assert net.stage_channels == [(4, 4), (8, 8), (16, 16)]
    assert [n for n, _ in net.named_children()] == ["block1", "block2", "block3", "pool", "fc"]


@pytest.mark.parametrize("size", [(16, 16), (20, 24), (18, 22)])
def test_segnet_output_at_input_resolution(size: tuple[int, int]) -> None:
    net = SegNetBackbone(3, width=4, depth=3)
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 4, *size)
    assert net.out_channels == 4


def test_segnet_stages_and_config() -> None:
    net = SegNetBackbone(1, width=2, depth=2, convs_per_stage=(1, 3))
    stages = net.forward_stages(torch.randn(1, 1, 8, 8))
    assert len(stages) == 4 == len(net.stage_channels)
    shapes = [(tuple(u.shape), tuple(p.shape)) for u, p in stages]
    assert shapes == [
        ((1, 2, 8, 8), (1, 2, 8, 8)),
        ((1, 4, 4, 4), (1, 4, 4, 4)),
        ((1, 2, 4, 4), (1, 2, 4, 4)),  # decoder: unpool to 4x4, map 4 -> 2 channels
        ((1, 2, 8, 8), (1, 2, 8, 8)),
    ]
    assert [len(list(stage.children())) for stage in net.encoder] == [1, 3]
    paper = SegNetBackbone.mtan_nyuv2()
    assert paper.channels == [64, 128, 256, 512, 512]
    assert [len(list(stage.children())) for stage in paper.encoder] == [2, 2, 3, 3, 3]
    assert paper.out_channels == 64


def test_segnet_errors() -> None:
    with pytest.raises(ValueError, match="H, W >= 8"):
        SegNetBackbone(3, depth=3)(torch.randn(1, 3, 4, 16))
    with pytest.raises(ValueError, match="convs_per_stage"):
        SegNetBackbone(3, depth=3, convs_per_stage=(2, 2))
    with pytest.raises(ValueError, match="width"):
        SegNetBackbone(3, width=0)


def test_resnet_without_torchvision_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ImportError, match=r'pip install "taskbalance\[vision\]"'):
        resnet_backbone("resnet18")


def test_resnet_argument_errors() -> None:
    with pytest.raises(ValueError, match="resnet7"):
        resnet_backbone("resnet7")
    with pytest.raises(ValueError, match="BasicBlock"):
        resnet_backbone("resnet18", dilated=True)


def test_resnet_real_path() -> None:
    pytest.importorskip("torchvision")
    net = resnet_backbone("resnet18")
    assert net.out_channels == 512 and net.output_stride == 32
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    dilated = resnet_backbone("resnet50", dilated=True)
    assert dilated.output_stride == 8
    assert dilated(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 8, 8)
