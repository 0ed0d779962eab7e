"""Tiny fake copies of the real datasets, written in their published layouts (random content).

For tests, loader benchmarks and smoke runs of ``--dataset`` without the real data::

    write_fake_dataset("nyuv2", "/tmp/fake-nyuv2", train=4, test=2)
    taskbalance train --dataset nyuv2 --data-root /tmp/fake-nyuv2 --steps 1 --epochs 1

The files follow ``docs/datasets.md``: per-sample ``.npy`` files of MTAN's preprocessing for NYUv2
and Cityscapes (float arrays, label ``-1`` = ignored pixel, depth ``0`` = no measurement), PNGs
named ``<id>_<count><L|R>.png`` for Fingers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FAKE_DATASETS", "write_fake_dataset"]

#: Default image size of the fake files (small: the point is the layout, not the content).
FAKE_SIZE = (16, 16)


def _npy_sample(
    rng: np.random.Generator, height: int, width: int, classes: int, normals: bool
) -> dict[str, np.ndarray]:
    image = rng.random((height, width, 3), dtype=np.float32)
    label = rng.integers(0, classes, (height, width)).astype(np.float32)
    label[rng.random((height, width)) < 0.1] = -1.0  # ignored pixels
    depth = rng.uniform(0.5, 10.0, (height, width, 1)).astype(np.float32)
    depth[rng.random((height, width, 1)) < 0.1] = 0.0  # no measurement
    sample = {"image": image, "label": label, "depth": depth}
    if normals:
        normal = rng.standard_normal((height, width, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        sample["normal"] = normal
    return sample


def _write_npy(
    root: Path, name: str, counts: dict[str, int], size: tuple[int, int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    height, width = size
    for folder, count in counts.items():
        for i in range(count):
            if name == "nyuv2":
                sample = _npy_sample(rng, height, width, 13, normals=True)
            else:  # cityscapes: the three label sets, 7, 19 and 2 classes
                sample = _npy_sample(rng, height, width, 7, normals=False)
                sample["label_7"] = sample.pop("label")
                for classes in (19, 2):
                    labels = _npy_sample(rng, height, width, classes, False)["label"]
                    sample[f"label_{classes}"] = labels
            for modality, array in sample.items():
                path = root / folder / modality
                path.mkdir(parents=True, exist_ok=True)
                np.save(path / f"{i}.npy", array)


def _write_fingers(root: Path, counts: dict[str, int], size: tuple[int, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            fingers, hand = int(rng.integers(0, 6)), "LR"[int(rng.integers(0, 2))]
            pixels = rng.integers(0, 256, size, dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / folder / f"{i:06x}_{fingers}{hand}.png")


def _write_celeba(root: Path, counts: dict[str, int], size: tuple[int, int], seed: int) -> None:
    from PIL import Image

    from taskbalance.data.real.celeba import CELEBA_ATTRIBUTES, CELEBA_SPLITS

    rng = np.random.default_rng(seed)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    parts: list[str] = []
    for split, count in counts.items():
        for _ in range(count):
            name = f"{len(rows) + 1:06d}.jpg"
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / "img_align_celeba" / name)
            values = rng.choice(["-1", " 1"], size=len(CELEBA_ATTRIBUTES))
            rows.append(f"{name} " + " ".join(values))
            parts.append(f"{name} {CELEBA_SPLITS[split]}")
    header = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES)]
    (root / "list_attr_celeba.txt").write_text("\n".join(header + rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


def _write_mnist(root: Path, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", counts["train"]), ("t10k", counts["test"])):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            data = magic.to_bytes(4, "big") + dims + array.tobytes()
            (root / f"{prefix}-{kind}-ubyte").write_bytes(data)


FAKE_DATASETS = ("nyuv2", "cityscapes", "fingers", "celeba", "multimnist")


def write_fake_dataset(
    name: str,
    root: str | Path,
    *,
    train: int = 4,
    test: int = 2,
    size: tuple[int, int] = FAKE_SIZE,
    seed: int = 0,
) -> Path:
    """Write ``train`` + ``test`` random samples of dataset ``name`` under ``root`` in its
    published layout; returns ``root``."""
    root = Path(root)
    if name == "fingers":
        _write_fingers(root, {"train": train, "test": test}, size, seed)
    elif name in ("nyuv2", "cityscapes"):
        _write_npy(root, name, {"train": train, "val": test}, size, seed)
    elif name == "celeba":  # the validation split gets as many images as the test split
        _write_celeba(root, {"train": train, "val": test, "test": test}, size, seed)
    elif name == "multimnist":  # MNIST's idx files (28 x 28 whatever ``size``)
        _write_mnist(root, {"train": train, "test": test}, seed)
    else:
        raise ValueError(f"no fake writer for dataset {name!r}; available: {FAKE_DATASETS}")
    return root
