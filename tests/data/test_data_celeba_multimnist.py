"""CelebA and MultiMNIST readers on tiny fake files in the exact layout of the releases."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from taskbalance.data.real.celeba import CELEBA_ATTRIBUTES, CelebA
from taskbalance.data.real.multimnist import MultiMNIST, compose_pairs, load_multimnist

PIL = pytest.importorskip("PIL.Image")

ATTRS = list(CELEBA_ATTRIBUTES)


def _write_celeba(root: Path, colours: list[tuple[int, int, int]], parts: list[int]) -> np.ndarray:
    (root / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(len(colours), 40))
    lines = [str(len(colours)), " ".join(ATTRS)]
    for k, colour in enumerate(colours):
        name = f"{k + 1:06d}.jpg"
        PIL.new("RGB", (178 // 8, 218 // 8), colour).save(root / "img_align_celeba" / name)
        # the release pads the values with two spaces; the reader splits on any whitespace
        lines.append(name + "  " + " ".join(f"{v:2d}" for v in values[k]))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [f"{k + 1:06d}.jpg {p}" for k, p in enumerate(parts)]
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return values


def test_celeba_items_are_the_images_and_attributes(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (40, 80, 120)]
    values = _write_celeba(tmp_path, colours, [0, 1, 0, 2])
    train = CelebA(tmp_path, "train", image_size=8)
    assert len(train) == 2 and train.task_names == ATTRS and len(train.tasks) == 40
    image, targets, masks = train[1]  # the third file: partition 0, blue
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([0.0, 0.0, 1.0]), atol=0.02)
    expected = (values[2] == 1).astype(np.int64)
    got = np.array([int(targets[a]) for a in ATTRS])
    assert (got == expected).all() and targets[ATTRS[0]].dtype == torch.int64
    assert all(bool(m) for m in masks.values())
    test = CelebA(tmp_path, "test", image_size=8)
    assert len(test) == 1
    assert torch.allclose(test[0][0][:, 0, 0], torch.tensor([40, 80, 120]) / 255.0, atol=0.02)


def test_celeba_errors_name_the_layout_and_docs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="img_align_celeba.*docs/datasets.md#celeba"):
        CelebA(tmp_path)
    _write_celeba(tmp_path, [(1, 2, 3)], [0])
    good = (tmp_path / "list_attr_celeba.txt").read_text()
    (tmp_path / "list_attr_celeba.txt").write_text(good.replace(" 1", " 0", 1))
    with pytest.raises(ValueError, match="line 3 .* 40 values -1/1"):
        CelebA(tmp_path)
    (tmp_path / "list_attr_celeba.txt").write_text(good.replace("Young", "Old"))
    with pytest.raises(ValueError, match=r"40 CelebA attributes .* e.g. \['Old'\]"):
        CelebA(tmp_path)
    (tmp_path / "list_attr_celeba.txt").write_text(good)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        CelebA(tmp_path)
    with pytest.raises(ValueError, match="split"):
        CelebA(tmp_path, "validation")


def _idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.with_name(path.name + (".gz" if gz else "")).write_bytes(
        gzip.compress(data) if gz else data
    )


def _write_mnist(root: Path, n_train: int = 6, n_test: int = 3) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, n_train)):
        # image k is filled with the value 10 * (k + 1): each output pixel tells its source
        values = 10 * (np.arange(n) + offset + 1)
        images = np.broadcast_to(values[:, None, None], (n, 28, 28))
        _idx(root / f"{prefix}-images-idx3-ubyte", images, gz=prefix == "t10k")
        _idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) + offset) % 10)


def test_compose_pairs_matches_the_canvas_by_hand() -> None:
    images = np.stack([np.full((28, 28), 200), np.full((28, 28), 100)]).astype(np.uint8)
    out = compose_pairs(images, np.array([0]), np.array([1]))[0]
    canvas = np.zeros((36, 36))
    canvas[6:34, 6:34] = 100
    canvas[0:28, 0:28] = 200  # the left digit is brighter, so it wins the overlap
    rows = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)  # nearest, pixel centres
    assert out.dtype == np.uint8 and (out == canvas[np.ix_(rows, rows)]).all()


def test_multimnist_splits_labels_and_cache(tmp_path: Path, monkeypatch) -> None:
    _write_mnist(tmp_path / "mnist")
    data = MultiMNIST(tmp_path / "mnist", seed=3, val_size=2, cache_dir=tmp_path / "cache")
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 3)
    for split, first in ((data.train, 0), (data.val, 4), (data.test, 6)):
        for i in range(len(split)):
            image, targets, _ = split[i]
            assert image.shape == (1, 28, 28) and image.dtype == torch.float32
            left_src = round(float(image[0, 0, 0]) * 255) // 10 - 1
            right_src = round(float(image[0, 25, 25]) * 255) // 10 - 1  # canvas row 32
            assert left_src == first + i  # every image of the pool is a left digit once
            assert first <= right_src < first + len(split)  # partners from the same pool
            assert int(targets["left"]) == left_src % 10
            assert int(targets["right"]) == right_src % 10
    assert [t.name for t in data.tasks] == ["left", "right"]
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1

    import taskbalance.data.real.multimnist as module

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(module, "_generate", fail)
    again = load_multimnist(tmp_path / "mnist", seed=3, val_size=2, cache_dir=tmp_path / "cache")
    assert torch.equal(again["train"].inputs, data.train.inputs)


def test_multimnist_is_deterministic_in_the_seed(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "mnist", n_train=40)
    a = load_multimnist(tmp_path / "mnist", seed=0, val_size=5, cache_dir=tmp_path / "a")
    b = load_multimnist(tmp_path / "mnist", seed=0, val_size=5, cache_dir=tmp_path / "b")
    c = load_multimnist(tmp_path / "mnist", seed=1, val_size=5, cache_dir=tmp_path / "a")
    assert torch.equal(a["train"].targets["right"], b["train"].targets["right"])
    assert not torch.equal(a["train"].targets["right"], c["train"].targets["right"])


def test_multimnist_errors_name_the_file_and_docs(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*multimnist"):
        load_multimnist(tmp_path, cache_dir=tmp_path / "c")
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((3, 28, 28)))  # images, not labels
    with pytest.raises(ValueError, match="not an idx1-ubyte file"):
        load_multimnist(tmp_path, val_size=2, cache_dir=tmp_path / "c")


def test_registered_datasets_read_the_fake_layouts(tmp_path: Path, monkeypatch) -> None:
    from taskbalance.data import load_dataset
    from taskbalance.data.real.fake import write_fake_dataset

    monkeypatch.setenv("TASKBALANCE_CACHE", str(tmp_path / "cache"))
    celeba = load_dataset("celeba", write_fake_dataset("celeba", tmp_path / "c"), image_size=8)
    assert (len(celeba.train), len(celeba.val), len(celeba.test)) == (4, 2, 2)
    assert celeba.task_names == ATTRS and celeba.input_shape == (3, 8, 8)
    assert celeba.build_model().eval()(celeba.train[0][0][None])["Young"].shape == (1, 2)
    root = write_fake_dataset("multimnist", tmp_path / "m", train=6, test=2)
    digits = load_dataset("multimnist", root, val_size=2, pair_seed=1)
    assert (len(digits.train), len(digits.val), len(digits.test)) == (4, 2, 2)
    assert digits.build_model().eval()(digits.test[0][0][None])["right"].shape == (1, 10)
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt.*docs/datasets.md#celeba"):
        load_dataset("celeba", tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.*#multimnist"):
        load_dataset("multimnist", tmp_path / "c")
