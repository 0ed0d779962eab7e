"""Model option ``architecture`` of nyuv2 / cityscapes: hard-shared SegNet or MTAN on it."""

from __future__ import annotations

import pytest
import torch

from taskbalance.data import load_dataset
from taskbalance.data.real.fake import write_fake_dataset
from taskbalance.models import MTAN, MultiTaskModel


def test_mtan_architecture_option(tmp_path) -> None:
    data = load_dataset("cityscapes", write_fake_dataset("cityscapes", tmp_path / "cs"))
    small = {"width": 4, "depth": 2}
    assert type(data.build_model(**small)) is MultiTaskModel
    mtan = data.build_model(**small, architecture="mtan")
    assert isinstance(mtan, MTAN)
    out = mtan.eval()(torch.stack([data.test[0][0], data.test[1][0]]))
    assert out["segmentation"].shape == (2, 7, 16, 16) and out["depth"].shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="'architecture' must be one of .*'segnet', 'mtan'"):
        data.build_model(architecture="pspnet")
