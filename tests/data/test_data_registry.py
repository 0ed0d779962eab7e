"""The real-dataset registry: names, options, held-out validation, layout errors, DataSource."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from taskbalance.data import (
    DatasetSpec,
    DataSource,
    RealDataSource,
    available_datasets,
    load_dataset,
    register_dataset,
)
from taskbalance.data.real.fake import write_fake_dataset
from taskbalance.data.registry import _REGISTRY


@pytest.fixture()
def nyu_root(tmp_path: Path) -> Path:
    return write_fake_dataset("nyuv2", tmp_path / "nyu", train=10, test=3, size=(8, 8))


def test_builtin_names() -> None:
    assert {"nyuv2", "cityscapes", "fingers"} <= set(available_datasets())


def test_unknown_name_suggests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'nyu_v2' \(did you mean 'nyuv2'\?\)"):
        load_dataset("nyu_v2", tmp_path)


def test_holdout_split_is_seeded_and_disjoint(nyu_root: Path) -> None:
    data = load_dataset("nyuv2", nyu_root)
    # 10 training files: round(0.1 * 10) = 1 held out for validation, 9 train; val/ = test
    assert (len(data.train), len(data.val), len(data.test)) == (9, 1, 3)
    train_idx, val_idx = set(data.train.indices), set(data.val.indices)
    assert train_idx.isdisjoint(val_idx) and train_idx | val_idx == set(range(10))
    again = load_dataset("nyuv2", nyu_root)
    assert again.val.indices == data.val.indices  # same split_seed, same split
    half = load_dataset("nyuv2", nyu_root, val_fraction=0.5, split_seed=3)
    assert (len(half.train), len(half.val)) == (5, 5)
    expected = sorted(np.random.default_rng(3).permutation(10)[:5].tolist())
    assert half.val.indices == expected
    # the held-out sample is the file of that index
    x, _, _ = half.val[0]
    image = np.load(nyu_root / "train" / "image" / f"{expected[0]}.npy")
    np.testing.assert_allclose(x.numpy(), image.transpose(2, 0, 1))


def test_val_fraction_zero_validates_on_test(nyu_root: Path) -> None:
    data = load_dataset("nyuv2", nyu_root, val_fraction=0)
    assert data.val is data.test and len(data.train) == 10


def test_bad_options(nyu_root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['classes'\].*val_fraction"):
        load_dataset("nyuv2", nyu_root, classes=3)
    with pytest.raises(ValueError, match="val_fraction.*\\[0, 1\\)"):
        load_dataset("nyuv2", nyu_root, val_fraction=1.0)
    with pytest.raises(ValueError, match="num_classes.*7 or 19"):
        load_dataset("cityscapes", nyu_root, num_classes=13)
    few = write_fake_dataset("nyuv2", nyu_root.parent / "few", train=1, test=1, size=(8, 8))
    with pytest.raises(ValueError, match="too few.*val_fraction to 0"):
        load_dataset("nyuv2", few)


def test_layout_errors_name_layout_and_docs(nyu_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("nyuv2", tmp_path / "missing")
    text = str(info.value)
    assert "does not exist" in text and "label/<i>.npy" in text
    assert "docs/datasets.md#nyuv2" in text
    (nyu_root / "val" / "depth" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth[/\\]1\.npy.*docs/datasets\.md#nyuv2"):
        load_dataset("nyuv2", nyu_root)
    with pytest.raises(FileNotFoundError, match=r"label_19.*docs/datasets\.md#cityscapes"):
        load_dataset("cityscapes", nyu_root, num_classes=19)


def test_data_sources_satisfy_protocol(nyu_root: Path) -> None:
    from taskbalance.data import load_benchmark

    data = load_dataset("nyuv2", nyu_root, val_fraction=0.2)
    assert isinstance(data, RealDataSource) and isinstance(data, DataSource)
    assert data.task_names == ["segmentation", "depth", "normals"] == [t.name for t in data.tasks]
    assert data.input_shape == (3, 8, 8)
    model = data.build_model(width=4, depth=2)
    x = torch.stack([data.train[i][0] for i in range(2)])
    out = model(x)
    assert out["segmentation"].shape == (2, 13, 8, 8) and out["depth"].shape == (2, 1, 8, 8)
    norms = out["normals"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    with pytest.raises(ValueError, match="unknown option.*'widht'"):
        data.build_model(widht=4)
    with pytest.raises(ValueError, match="convs_per_stage has 5 entries but depth=2"):
        data.build_model(width=4, depth=2, convs_per_stage=[2, 2, 3, 3, 3])
    bench = load_benchmark("multidigits", size="tiny")
    assert isinstance(bench, DataSource)


def test_register_one_more_dataset(nyu_root: Path) -> None:
    from taskbalance.data.real.nyuv2 import NYUv2
    from taskbalance.tasks import depth_task

    def read(root: Path, folder: str, options: dict) -> NYUv2:
        return NYUv2(root, folder)

    spec = DatasetSpec(
        name="depth-only",
        description="test",
        task_names=("depth",),
        folders={"train": "train", "val": "val", "test": "val"},
        read=read,
        make_tasks=lambda options: [depth_task("depth")],
        make_model=lambda options, model_options: None,  # type: ignore[arg-type,return-value]
        layout="as NYUv2",
    )
    register_dataset(spec)
    try:
        data = load_dataset("depth-only", nyu_root)
        assert len(data.val) == 3 and len(data.train) == 10  # its own val folder: no holdout
        with pytest.raises(ValueError, match="unknown option.*none"):
            load_dataset("depth-only", nyu_root, val_fraction=0.1)
    finally:
        del _REGISTRY["depth-only"]
    with pytest.raises(ValueError, match="folders must map 'train', 'test'"):
        DatasetSpec(
            name="x", description="", task_names=(), folders={"train": "a"}, read=read,
            make_tasks=spec.make_tasks, make_model=spec.make_model, layout="",
        )  # fmt: skip


def test_cityscapes_label_folders(tmp_path: Path) -> None:
    root = write_fake_dataset("cityscapes", tmp_path / "city", train=3, test=1, size=(8, 8))
    for classes in (2, 7, 19):
        data = load_dataset("cityscapes", root, num_classes=classes, val_fraction=0)
        raw = np.load(root / "val" / f"label_{classes}" / "0.npy")
        seg = data.test[0][1]["segmentation"].numpy()
        np.testing.assert_array_equal(seg, np.where(raw == -1, 255, raw).astype(np.int64))
        assert data.tasks[0].new_metrics() is not None
    # LibMTL's copy keeps the 7-class labels in label/
    for split in ("train", "val"):
        (root / split / "label_7").rename(root / split / "label")
    data = load_dataset("cityscapes", root, val_fraction=0)
    raw = np.load(root / "val" / "label" / "0.npy")
    np.testing.assert_array_equal(data.test[0][1]["segmentation"].numpy() == 255, raw == -1)
    for split in ("train", "val"):
        (root / split / "label_19").rename(root / split / "other")
    with pytest.raises(FileNotFoundError, match="label_19"):  # label/ holds 7 classes only
        load_dataset("cityscapes", root, num_classes=19, val_fraction=0)


def test_dataset_fingerprint_names_the_files_not_the_folder(nyu_root: Path, tmp_path: Path) -> None:
    import os
    import shutil

    from taskbalance.data.registry import dataset_fingerprint

    files = [p for p in nyu_root.rglob("*") if p.is_file()]
    first = dataset_fingerprint("nyuv2", nyu_root)
    # (10 + 3 samples) x (image, label, depth, normal)
    assert first["files"] == len(files) == 13 * 4
    assert first["bytes"] == sum(p.stat().st_size for p in files)
    (nyu_root / ".DS_Store").write_text("x")  # hidden files are not data
    (nyu_root / ".cache").mkdir()
    (nyu_root / ".cache" / "a").write_text("x")
    copy = Path(shutil.copytree(nyu_root, tmp_path / "copy"))  # copytree keeps the times
    assert dataset_fingerprint("nyuv2", copy) == first
    one = copy / "val" / "depth" / "0.npy"  # the test split's folder is "val"
    one.rename(copy / "val" / "depth" / "9.npy")
    assert dataset_fingerprint("nyuv2", copy)["digest"] != first["digest"]  # a file renamed
    (copy / "val" / "depth" / "9.npy").rename(one)
    assert dataset_fingerprint("nyuv2", copy) == first
    (copy / "val" / "extra.txt").write_text("")
    assert dataset_fingerprint("nyuv2", copy)["files"] == first["files"] + 1
    os.remove(copy / "val" / "extra.txt")
    with open(one, "ab") as handle:
        handle.write(b"\0")
    os.utime(one, (0, os.stat(nyu_root / "val" / "depth" / "0.npy").st_mtime))
    changed = dataset_fingerprint("nyuv2", copy)  # one byte more, the same time
    assert changed["bytes"] == first["bytes"] + 1 and changed["digest"] != first["digest"]
    with pytest.raises(FileNotFoundError, match=r"data root .*missing.* does not exist.*layout"):
        dataset_fingerprint("nyuv2", tmp_path / "missing")


def test_dataset_fingerprint_links_to_nothing_loops_and_unreadable_folders(
    nyu_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link whose target is gone and a linked folder that leads back up were errors (No such
    file; ELOOP after walking the tree 40 times); they are not data: named in the digest, not
    counted, not followed. An unreadable folder (a disk's lost+found) is named, not an error."""
    import os

    from taskbalance.data.registry import dataset_fingerprint

    first = dataset_fingerprint("nyuv2", nyu_root)
    os.symlink(nyu_root / "gone.npy", nyu_root / "train" / "stale.npy")
    stale = dataset_fingerprint("nyuv2", nyu_root)
    assert (stale["files"], stale["bytes"]) == (first["files"], first["bytes"])
    assert stale["digest"] != first["digest"]
    os.remove(nyu_root / "train" / "stale.npy")
    os.symlink("..", nyu_root / "train" / "up")  # train/up/train/up/...
    loop = dataset_fingerprint("nyuv2", nyu_root)
    assert (loop["files"], loop["bytes"]) == (first["files"], first["bytes"])
    assert loop["digest"] not in (first["digest"], stale["digest"])
    os.remove(nyu_root / "train" / "up")
    os.symlink(nyu_root / "val", nyu_root / "more")  # a linked folder elsewhere is followed
    linked = dataset_fingerprint("nyuv2", nyu_root)
    assert linked["files"] == first["files"] + 3 * 4 and linked["bytes"] > first["bytes"]
    os.remove(nyu_root / "more")
    assert dataset_fingerprint("nyuv2", nyu_root) == first
    scandir = os.scandir

    def refuse(path):  # root may read every folder: the refusal is simulated
        if Path(path).name == "depth":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    closed = dataset_fingerprint("nyuv2", nyu_root)
    assert closed["files"] == first["files"] - (10 + 3)  # train/depth and val/depth
    assert closed["digest"] != first["digest"]
