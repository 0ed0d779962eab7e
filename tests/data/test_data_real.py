"""Real dataset layouts: tiny fixture folders generated in tmp_path, loaded, and broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from taskbalance.data.real import Cityscapes, Fingers, NYUv2

H, W = 6, 8


def _npy_layout(
    root: Path, folders: dict[str, tuple[int, ...]], counts: dict[str, int], classes: int
) -> None:
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for folder, shape in folders.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if folder.startswith("label"):
                    array = rng.integers(-1, classes, shape).astype(np.float32)
                elif folder == "normal":
                    array = rng.standard_normal(shape).astype(np.float32)
                    array /= np.linalg.norm(array, axis=-1, keepdims=True)
                else:
                    array = rng.random(shape).astype(np.float32)
                np.save(root / split / folder / f"{i}.npy", array)


NYU_FOLDERS = {"image": (H, W, 3), "label": (H, W), "depth": (H, W, 1), "normal": (H, W, 3)}


@pytest.fixture()
def nyu_root(tmp_path: Path) -> Path:
    root = tmp_path / "nyuv2"
    _npy_layout(root, NYU_FOLDERS, {"train": 3, "val": 2}, 13)
    return root


def test_nyuv2_loads(nyu_root: Path) -> None:
    train, val = NYUv2(nyu_root, "train"), NYUv2(nyu_root, "val")
    assert (len(train), len(val)) == (3, 2)
    x, targets, masks = train[1]
    assert x.shape == (3, H, W) and x.dtype == torch.float32
    assert targets["segmentation"].shape == (H, W) and targets["segmentation"].dtype == torch.int64
    assert targets["depth"].shape == (1, H, W) and targets["normals"].shape == (3, H, W)
    raw = np.load(nyu_root / "train" / "label" / "1.npy")
    seg = targets["segmentation"].numpy()
    assert (seg[raw == -1] == 255).all() and (seg[raw >= 0] == raw[raw >= 0]).all()
    np.testing.assert_allclose(
        x.numpy(), np.load(nyu_root / "train" / "image" / "1.npy").transpose(2, 0, 1)
    )
    assert all(bool(m) for m in masks.values())
    assert train.task_names == ["segmentation", "depth", "normals"]
    assert train.input_shape == (3, H, W)
    batch = next(iter(DataLoader(train, batch_size=3)))
    assert batch[0].shape == (3, 3, H, W)
    train.validate()


def test_nyuv2_tasks(nyu_root: Path) -> None:
    pytest.importorskip("taskbalance.tasks")
    tasks = NYUv2(nyu_root).tasks
    assert [t.name for t in tasks] == ["segmentation", "depth", "normals"]


def test_nyuv2_index_order_numeric(tmp_path: Path) -> None:
    root = tmp_path / "n"
    _npy_layout(root, NYU_FOLDERS, {"train": 11}, 13)
    ds = NYUv2(root)
    assert ds.indices == list(range(11))  # 10 after 9, not after 1


def test_missing_root_split_and_folder(nyu_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NYUv2(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="test.*'train', 'val'"):
        NYUv2(nyu_root, "test")
    for path in (nyu_root / "train" / "normal").iterdir():
        path.unlink()
    (nyu_root / "train" / "normal").rmdir()
    with pytest.raises(FileNotFoundError, match=r"normal.*<index>\.npy"):
        NYUv2(nyu_root, "train")


def test_missing_and_extra_files(nyu_root: Path) -> None:
    (nyu_root / "train" / "depth" / "2.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth[/\\]2\.npy"):
        NYUv2(nyu_root, "train")
    np.save(nyu_root / "val" / "label" / "7.npy", np.zeros((H, W)))
    with pytest.raises(ValueError, match=r"7\.npy.*image/7\.npy"):
        NYUv2(nyu_root, "val")


def test_malformed_file_name(nyu_root: Path) -> None:
    np.save(nyu_root / "train" / "image" / "img_0.npy", np.zeros((H, W, 3)))
    with pytest.raises(ValueError, match=r"img_0\.npy.*<index>\.npy"):
        NYUv2(nyu_root, "train")


@pytest.mark.parametrize(
    ("folder", "array", "match"),
    [
        ("image", np.zeros((H, W)), r"image[/\\]0\.npy.*H x W x 3"),
        ("label", np.zeros((H, W, 1)), rf"label[/\\]0\.npy.*{H} x {W}"),
        ("depth", np.zeros((H, W + 1, 1)), rf"depth[/\\]0\.npy.*{H} x {W} x 1"),
        ("normal", np.zeros((H, W, 2)), rf"normal[/\\]0\.npy.*{H} x {W} x 3"),
        ("label", np.full((H, W), 13.0), r"label[/\\]0\.npy.*unknown label.*13"),
        ("label", np.full((H, W), 0.5), "non-integer"),
    ],
)
def test_wrong_shape_or_label(nyu_root: Path, folder: str, array: np.ndarray, match: str) -> None:
    np.save(nyu_root / "train" / folder / "0.npy", array)
    with pytest.raises(ValueError, match=match):
        NYUv2(nyu_root, "train")


def test_bad_file_found_by_validate(nyu_root: Path) -> None:
    np.save(nyu_root / "train" / "label" / "2.npy", np.full((H, W), 40.0))
    ds = NYUv2(nyu_root, "train")  # only the first sample is checked eagerly
    with pytest.raises(ValueError, match=r"2\.npy.*40"):
        ds.validate()


@pytest.mark.parametrize("classes", [7, 19])
def test_cityscapes(tmp_path: Path, classes: int) -> None:
    root = tmp_path / "cityscapes"
    folders = {"image": (H, W, 3), f"label_{classes}": (H, W), "depth": (H, W, 1)}
    _npy_layout(root, folders, {"train": 2, "val": 1}, classes)
    ds = Cityscapes(root, "train", num_classes=classes)
    x, targets, masks = ds[0]
    assert list(targets) == ["segmentation", "depth"] and list(masks) == ["segmentation", "depth"]
    assert (
        int(targets["segmentation"].max()) in (255, classes - 1)
        or len(targets["segmentation"].unique()) > 1
    )
    assert int(targets["segmentation"][targets["segmentation"] != 255].max()) < classes
    other = 19 if classes == 7 else 7
    with pytest.raises(FileNotFoundError, match=f"label_{other}"):
        Cityscapes(root, "train", num_classes=other)
    with pytest.raises(ValueError, match="7 or 19"):
        Cityscapes(root, "train", num_classes=13)
    pytest.importorskip("taskbalance.tasks")
    assert [t.name for t in ds.tasks] == ["segmentation", "depth"]


# ----------------------------------------------------------------------------- Fingers


def _png(path: Path, value: int, size: int = 12) -> None:
    from PIL import Image

    array = np.full((size, size), value, dtype=np.uint8)
    array[: size // 2] = 255 - value
    Image.fromarray(array, mode="L").save(path)


@pytest.fixture()
def fingers_root(tmp_path: Path) -> Path:
    pytest.importorskip("PIL")
    root = tmp_path / "fingers"
    names = {
        "train": ["000e7aa6-100b-4c6b-9ff0-e7a8e53e4465_0L.png", "a1_3R.png", "b2_5L.png"],
        "test": ["c3_2R.png", "d4_4L.png"],
    }
    for split, files in names.items():
        (root / split).mkdir(parents=True)
        for i, name in enumerate(files):
            _png(root / split / name, 40 * i)
    return root


def test_fingers_loads(fingers_root: Path) -> None:
    ds = Fingers(fingers_root, "train")
    assert len(ds) == 3 and ds.task_names == ["count", "hand"]
    got = sorted((int(ds[i][1]["count"]), int(ds[i][1]["hand"])) for i in range(3))
    assert got == [(0, 0), (3, 1), (5, 0)]
    x, _, masks = ds[0]
    assert x.shape == (1, 12, 12) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert all(bool(m) for m in masks.values())
    small = Fingers(fingers_root, "test", image_size=8)
    assert small[0][0].shape == (1, 8, 8) and small.input_shape == (1, 8, 8)
    batch = next(iter(DataLoader(small, batch_size=2)))
    assert batch[1]["count"].tolist() == [2, 4] and batch[1]["hand"].tolist() == [1, 0]
    pytest.importorskip("taskbalance.tasks")
    assert [t.name for t in ds.tasks] == ["count", "hand"]


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("noscore3L.png", "malformed file name"),
        ("x_L3.png", "malformed file name"),
        ("x_6L.png", "unknown finger count 6"),
        ("x_2X.png", "unknown hand 'X'"),
    ],
)
def test_fingers_bad_names(fingers_root: Path, name: str, match: str) -> None:
    _png(fingers_root / "train" / name, 0)
    with pytest.raises(ValueError, match=match) as info:
        Fingers(fingers_root, "train")
    assert name in str(info.value)


def test_fingers_missing_folder(fingers_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="valid"):
        Fingers(fingers_root, "valid")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no PNG"):
        Fingers(tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="image_size"):
        Fingers(fingers_root, "train", image_size=0)


def test_npy_values_and_non_finite_depth_and_normals(nyu_root: Path) -> None:
    # depth and normals come through unchanged; a non-finite depth becomes 0 and a normal with any
    # non-finite component becomes the zero vector (both = invalid pixel), never a half-zeroed one
    depth = np.load(nyu_root / "train" / "depth" / "2.npy")
    normal = np.load(nyu_root / "train" / "normal" / "2.npy")
    depth[0, 0, 0] = np.nan
    depth[1, 2, 0] = np.inf
    normal[3, 4, 1] = np.nan  # one component only
    normal[5, 7] = np.inf
    np.save(nyu_root / "train" / "depth" / "2.npy", depth)
    np.save(nyu_root / "train" / "normal" / "2.npy", normal)
    _, targets, _ = NYUv2(nyu_root)[2]
    got_depth, got_normal = targets["depth"].numpy(), targets["normals"].numpy()
    expected_depth = depth[..., 0].copy()
    expected_depth[0, 0] = expected_depth[1, 2] = 0.0
    np.testing.assert_array_equal(got_depth[0], expected_depth)
    expected_normal = normal.copy()
    expected_normal[3, 4] = expected_normal[5, 7] = 0.0
    np.testing.assert_array_equal(got_normal, expected_normal.transpose(2, 0, 1))
    assert np.isfinite(got_normal).all() and np.isfinite(got_depth).all()
