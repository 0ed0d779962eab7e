"""ScaleCropFlip: the random scale-crop of the NYUv2/Cityscapes protocol, checked by hand."""

from __future__ import annotations

import pytest
import torch

from taskbalance.data.augment import AugmentedDataset, ScaleCropFlip


def _sample(h: int = 6, w: int = 8):
    ramp = torch.arange(w, dtype=torch.float32).expand(h, w)
    image = torch.stack([ramp, ramp, ramp]) / w
    targets = {
        "segmentation": ramp.long(),  # class = column
        "depth": torch.full((1, h, w), 3.0),
        "normals": torch.stack(
            [torch.full((h, w), 0.6), torch.zeros(h, w), torch.full((h, w), 0.8)]
        ),
        "other": torch.tensor(4),
    }
    return image, targets, {k: torch.tensor(True) for k in targets}


def test_scale_one_without_flip_is_the_identity() -> None:
    aug = ScaleCropFlip(
        {"segmentation": "label", "depth": "depth", "normals": "normal"}, scales=[1.0], flip=False
    )
    image, targets, masks = _sample()
    out_image, out, out_masks = aug(image, targets, masks)
    assert torch.equal(out_image, image) and out_masks is masks
    for k in targets:
        assert torch.equal(out[k], targets[k]) and out[k].dtype == targets[k].dtype


def test_scale_two_crops_half_and_divides_depth() -> None:
    torch.manual_seed(0)
    aug = ScaleCropFlip(
        {"segmentation": "label", "depth": "depth", "normals": "normal"}, scales=[2.0], flip=False
    )
    for _ in range(5):
        _, out, _ = aug(*_sample())
        seg = out["segmentation"]
        assert seg.shape == (6, 8) and seg.dtype == torch.int64
        # a 4-column window zoomed x2: each class appears in 2 columns, 4 consecutive classes
        classes = seg[0].tolist()
        assert classes == sorted(classes) and len(set(classes)) == 4
        assert all(classes.count(c) == 2 for c in set(classes))
        assert torch.allclose(out["depth"], torch.full((1, 6, 8), 1.5))  # 3 / 2
        assert torch.equal(out["other"], torch.tensor(4))


def test_flip_mirrors_everything_and_negates_normal_x() -> None:
    aug = ScaleCropFlip({"segmentation": "label", "normals": "normal"}, scales=[1.0])
    flips = 0
    torch.manual_seed(1)
    for _ in range(20):
        image, targets, masks = _sample()
        out_image, out, _ = aug(image, targets, masks)
        if torch.equal(out["segmentation"], targets["segmentation"].flip(-1)):
            flips += 1
            assert torch.equal(out_image, image.flip(-1))
            assert torch.allclose(out["normals"][0], torch.full((6, 8), -0.6))
            assert torch.allclose(out["normals"][2], torch.full((6, 8), 0.8))
        else:
            assert torch.equal(out["segmentation"], targets["segmentation"])
    assert 0 < flips < 20


def test_wrapper_forwards_attributes_and_bad_kinds_are_refused() -> None:
    class Data(torch.utils.data.Dataset):
        tasks = ["t"]

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i):
            return _sample()

    wrapped = AugmentedDataset(Data(), ScaleCropFlip({"depth": "depth"}, scales=[1.0], flip=False))
    assert len(wrapped) == 1 and wrapped.tasks == ["t"]
    assert torch.equal(wrapped[0][1]["depth"], _sample()[1]["depth"])
    with pytest.raises(ValueError, match="unknown target kind"):
        ScaleCropFlip({"depth": "disparity"})
    with pytest.raises(ValueError, match="scales"):
        ScaleCropFlip({"depth": "depth"}, scales=[0.5])


def test_the_augment_option_wraps_the_training_split_only(tmp_path) -> None:
    from taskbalance.data import load_dataset
    from taskbalance.data.real.fake import write_fake_dataset

    root = write_fake_dataset("nyuv2", tmp_path / "nyu", train=4, test=2)
    plain = load_dataset("nyuv2", root)
    data = load_dataset("nyuv2", root, augment=True)
    assert isinstance(data.train, AugmentedDataset) and isinstance(
        data.train.transform, ScaleCropFlip
    )
    assert data.train.transform.kinds == {
        "segmentation": "label",
        "depth": "depth",
        "normals": "normal",
    }
    assert not isinstance(data.val, AugmentedDataset)  # held out before augmenting
    assert len(data.train) == len(plain.train) and torch.equal(data.val[0][0], plain.val[0][0])
    with pytest.raises(ValueError, match="'augment' must be true or false"):
        load_dataset("cityscapes", write_fake_dataset("cityscapes", tmp_path / "cs"), augment=1)
