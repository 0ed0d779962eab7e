"""Plain-torch ResNet-18 and the MultiMNIST LeNet: sizes against the published architectures."""

from __future__ import annotations

import pytest
import torch

from taskbalance.models.lenet import LeNetShared, lenet_multimnist
from taskbalance.models.resnet import basic_resnet, celeba_resnet18


def test_resnet18_has_torchvisions_parameter_count_and_strides() -> None:
    net = basic_resnet(18)
    # torchvision's resnet18 has 11,689,512 parameters; its classifier 512 * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)  # output stride 32
    cifar = basic_resnet(18, stem="cifar")
    assert cifar(torch.zeros(1, 3, 16, 16)).shape == (1, 512, 2, 2)  # output stride 8
    assert cifar.output_stride == 8 and cifar.out_channels == 512
    names = dict(net.named_parameters())
    assert "layer2.0.downsample.0.weight" in names and "layer1.0.downsample.0.weight" not in names


def test_celeba_resnet18_feeds_2048_features_to_one_linear_head_per_attribute() -> None:
    model = celeba_resnet18(["a", "b", "c"])
    out = model(torch.zeros(2, 3, 64, 64))
    assert set(out) == {"a", "b", "c"} and out["a"].shape == (2, 2)
    assert model.features.shape == (2, 2048)  # 512 x (8 / 4)^2, as avg_pool2d(4) in the paper


def test_lenet_matches_sener_koltun_sizes() -> None:
    shared = LeNetShared()
    # conv1 10*(25+1), conv2 20*(250+1), fc 320*50+50
    assert sum(p.numel() for p in shared.parameters()) == 260 + 5020 + 16050
    model = lenet_multimnist()
    out = model.eval()(torch.zeros(3, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"left": (3, 10), "right": (3, 10)}
    assert sum(p.numel() for p in model.task_parameters("left")) == 50 * 50 + 50 + 50 * 10 + 10


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="18 or 34"):
        basic_resnet(50)
    with pytest.raises(ValueError, match="stem"):
        basic_resnet(18, stem="tiny")
    with pytest.raises(ValueError, match="image_size >= 16"):
        LeNetShared(image_size=8)
