"""Value checks of the .npy readers: what MTAN's files hold passes unchanged, wrong encodings are
refused with the file and the expected range named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from taskbalance.data.real import NYUv2
from taskbalance.data.real.fake import write_fake_dataset


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return write_fake_dataset("nyuv2", tmp_path / "nyu", train=2, test=1, size=(4, 6))


def _put(root: Path, folder: str, array: np.ndarray) -> None:
    np.save(root / "train" / folder / "0.npy", array)


def test_float64_files_and_uint8_images(root: Path) -> None:
    image = np.load(root / "train" / "image" / "0.npy").astype(np.float64)
    depth = np.load(root / "train" / "depth" / "0.npy").astype(np.float64)
    _put(root, "image", image)
    _put(root, "depth", depth)
    x, targets, _ = NYUv2(root)[0]
    assert x.dtype == torch.float32 and targets["depth"].dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), image.transpose(2, 0, 1), rtol=1e-6)
    assert (targets["depth"].numpy()[0] == 0).sum() == (depth[..., 0] == 0).sum()  # kept invalid
    as_bytes = (np.arange(72).reshape(4, 6, 3) * 3).astype(np.uint8)
    _put(root, "image", as_bytes)
    x, _, _ = NYUv2(root)[0]
    np.testing.assert_allclose(x.numpy(), as_bytes.transpose(2, 0, 1) / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("folder", "array", "match"),
    [
        ("image", np.full((4, 6, 3), 200.0), r"pixel values in \[200, 200\].*\[0, 1\]"),
        ("image", np.full((4, 6, 3), np.nan), "non-finite pixel"),
        ("depth", np.full((4, 6, 1), -1.0), "negative depth -1"),
        ("normal", np.full((4, 6, 3), 128.0), r"magnitude 128.*\[-1, 1\]"),
        ("depth", np.full((4, 6, 1), "a"), "dtype <U1, expected a float depth"),
    ],
)
def test_wrong_encodings_refused(root: Path, folder: str, array: np.ndarray, match: str) -> None:
    _put(root, folder, array)
    with pytest.raises(ValueError, match=match) as info:
        NYUv2(root)
    assert f"{folder}" in str(info.value) and "0.npy" in str(info.value)
