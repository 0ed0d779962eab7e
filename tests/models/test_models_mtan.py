"""MTAN (Liu et al., CVPR 2019)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskbalance.models import (
    MTAN,
    ClassificationHead,
    DenseHead,
    NormalHead,
    SegNetBackbone,
    SmallCNN,
)


def segnet_mtan(**kwargs) -> MTAN:
    heads = {"seg": DenseHead(4, 5), "depth": DenseHead(4, 1), "normal": NormalHead(4)}
    return MTAN(SegNetBackbone(3, width=4, depth=2), heads, **kwargs)


def test_shapes_and_masks_in_unit_interval() -> None:
    model = segnet_mtan(record_masks=True)
    out = model(torch.randn(2, 3, 12, 16))
    assert out["seg"].shape == (2, 5, 12, 16)
    assert out["depth"].shape == (2, 1, 12, 16)
    assert out["normal"].shape == (2, 3, 12, 16)
    masks = model.attention_masks
    assert set(masks) == {"seg", "depth", "normal"}
    assert len(masks["seg"]) == 4  # 2 encoder + 2 decoder stages
    for task_masks in masks.values():
        for m in task_masks:
            assert m.min() > 0 and m.max() < 1
    assert model.features is None and not model.supports_rep_mode


@pytest.mark.parametrize("share", [True, False])
def test_split_and_gradients(share: bool, partition_check, task_grads) -> None:
    model = segnet_mtan(share_attention_convs=share)
    partition_check(model)
    shared = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in model.backbone.parameters()} <= shared
    att_seg = {id(p) for p in model.attention["seg"].parameters()}
    assert att_seg <= {id(p) for p in model.task_parameters("seg")}
    g = task_grads(model, torch.randn(2, 3, 8, 8), "seg")
    assert g["touched"] <= g["shared"] | g["seg"]
    assert not g["touched"] & (g["depth"] | g["normal"])
    assert att_seg <= g["touched"]


def test_attention_module_counts() -> None:
    """Hand count for a 1-stage-per-side SegNet (depth 1, width 2): stages (2, 2), (2, 2)."""
    backbone = SegNetBackbone(1, width=2, depth=1, convs_per_stage=1)
    model = MTAN(backbone, {"a": DenseHead(2, 1)})
    # g^(1): conv1x1 2->2 (6) + BN(4) + conv1x1 2->2 (6) + BN(4) = 20
    # g^(2): conv1x1 4->2 (10) + BN(4) + conv1x1 2->2 (6) + BN(4) = 24
    assert sum(p.numel() for p in model.attention["a"].parameters()) == 44
    # f^(2): conv3x3 2->2 without bias (36) + BN (4) = 40, shared by default
    assert model.shared_f is not None
    assert sum(p.numel() for p in model.shared_f.parameters()) == 40


def test_small_cnn_backbone_and_single_task_copies() -> None:
    heads = {"a": ClassificationHead(4, 3), "b": ClassificationHead(4, 2)}
    model = MTAN(SmallCNN(1, width=2, out_dim=4), heads)
    x = torch.randn(2, 1, 8, 8)
    out = model(x)
    assert out["a"].shape == (2, 3) and out["b"].shape == (2, 2)
    singles = model.single_task_copies()
    assert singles["b"](x)["b"].shape == (2, 2)


def test_needs_a_staged_backbone() -> None:
    with pytest.raises(TypeError, match="staged"):
        MTAN(nn.Linear(3, 3), {"a": nn.Linear(3, 1)})


def test_freeze_task_keeps_its_batchnorm_in_eval() -> None:
    model = segnet_mtan()
    model.freeze("seg")
    model.train()
    bns = [m for m in model.attention["seg"].modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    assert all(m.training for m in model.attention["depth"].modules())
    assert model.task_parameters("seg") == []
