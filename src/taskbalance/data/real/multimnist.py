"""MultiMNIST built from MNIST's raw idx files, as Sener & Koltun (NeurIPS 2018) built it.

Construction (from the paper's code, https://github.com/isl-org/MultiObjectiveOptimization,
``multi_task/loaders/multi_mnist_loader.py``): every MNIST image of a pool is the *left* digit;
a second image drawn uniformly at random from the same pool is the *right* digit. On a 36 x 36
canvas the left digit fills rows/columns 0-27 and the right one 6-33; where they overlap the
brighter pixel wins (pixel-wise maximum). The canvas is resized to 28 x 28 (nearest neighbour).
Tasks: ``left`` and ``right``, 10 classes each.

Layout (the files of http://yann.lecun.com/exdb/mnist/, optionally gzipped)::

    <root>/train-images-idx3-ubyte    <root>/train-labels-idx1-ubyte
    <root>/t10k-images-idx3-ubyte     <root>/t10k-labels-idx1-ubyte

Splits: ``train`` and ``val`` from MNIST's training images (the last ``val_size`` of them are
the validation pool; the paper's code has no validation split), ``test`` from t10k. Generation
is deterministic in ``seed`` and cached as ``.npz`` (key: seed, ``val_size`` and a digest of the
label files). See ``docs/datasets.md#multimnist``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from taskbalance.data.dataset import MultiTaskDataset
from taskbalance.fileio import atomic_write

__all__ = ["MULTIMNIST_FILES", "MultiMNIST", "compose_pairs", "load_multimnist", "read_idx"]

MULTIMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TASKS = ("left", "right")
VERSION = 1
CANVAS, OFFSET, SIZE = 36, 6, 28
DOCS = "docs/datasets.md#multimnist"
LAYOUT = (
    "<root>/{train,t10k}-images-idx3-ubyte and <root>/{train,t10k}-labels-idx1-ubyte "
    "(MNIST's idx files, optionally with .gz)"
)
_MAGIC = {3: 2051, 1: 2049}


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MultiMNIST: {str(root / name)!r} (or .gz) not found; expected {LAYOUT} (see {DOCS})"
    )


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file (``ndim`` 3: images ``[N, 28, 28]``; 1: labels ``[N]``)."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _MAGIC[ndim] or len(raw) < header:
        raise ValueError(
            f"MultiMNIST: {str(path)!r} is not an idx{ndim}-ubyte file (magic {magic}, expected "
            f"{_MAGIC[ndim]}); expected {LAYOUT} (see {DOCS})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"MultiMNIST: {str(path)!r} announces shape {shape} but holds {data.size} bytes of data"
        )
    return data.reshape(shape)


def compose_pairs(images: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``[n, 28, 28]`` uint8 images of the pairs ``(images[left[k]], images[right[k]])``."""
    n, h = len(left), images.shape[1]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :h, :h] = images[left]
    region = canvas[:, OFFSET : OFFSET + h, OFFSET : OFFSET + h]
    np.maximum(region, images[right], out=region)
    small = F.interpolate(
        torch.from_numpy(canvas)[:, None].float(), size=(SIZE, SIZE), mode="nearest-exact"
    )
    return small[:, 0].round().to(torch.uint8).numpy()


def _split_arrays(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    left = np.arange(len(images))
    right = rng.integers(0, len(images), size=len(images))
    return compose_pairs(images, left, right), np.stack([labels[left], labels[right]], axis=1)


def _generate(root: Path, seed: int, val_size: int) -> dict[str, np.ndarray]:
    pools: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source, (img_name, lbl_name) in MULTIMNIST_FILES.items():
        images, labels = read_idx(_find(root, img_name), 3), read_idx(_find(root, lbl_name), 1)
        if len(images) != len(labels) or images.shape[1:] != (SIZE, SIZE):
            raise ValueError(
                f"MultiMNIST: {img_name} holds {images.shape} images for {len(labels)} labels; "
                f"expected [N, 28, 28] and N labels (see {DOCS})"
            )
        pools[source] = (images, labels)
    train_images, train_labels = pools["train"]
    if not 0 < val_size < len(train_images):
        raise ValueError(
            f"MultiMNIST val_size must be in 1..{len(train_images) - 1}, got {val_size!r}"
        )
    cut = len(train_images) - val_size
    pools = {
        "train": (train_images[:cut], train_labels[:cut]),
        "val": (train_images[cut:], train_labels[cut:]),
        "test": pools["test"],
    }
    out: dict[str, np.ndarray] = {}
    for k, (split, (images, labels)) in enumerate(pools.items()):
        x, y = _split_arrays(images, labels, np.random.default_rng([seed, k]))
        out[f"{split}_x"], out[f"{split}_y"] = x, y.astype(np.int64)
    return out


def _cache_path(root: Path, cache_dir: Path, seed: int, val_size: int) -> Path:
    digest = hashlib.sha256()
    for img_name, lbl_name in MULTIMNIST_FILES.values():
        digest.update(_find(root, lbl_name).read_bytes())
        digest.update(str(_find(root, img_name).stat().st_size).encode())
    key = f"v{VERSION}-seed{seed}-val{val_size}-{digest.hexdigest()[:16]}"
    return cache_dir / "multimnist" / f"{key}.npz"


def load_multimnist(
    root: str | Path, seed: int = 0, val_size: int = 10_000, cache_dir: str | Path | None = None
) -> dict[str, MultiTaskDataset]:
    """``{"train", "val", "test"}`` datasets of MultiMNIST (generated once per seed, cached)."""
    from taskbalance.data.benchmark import default_cache_dir

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"MultiMNIST: root {str(root)!r} does not exist; expected {LAYOUT} (see {DOCS})"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_path(root, cache, seed, val_size)
    arrays: dict[str, np.ndarray] | None = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError):
            arrays = None  # a damaged cache is regenerated
    if arrays is None:
        arrays = _generate(root, seed, val_size)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    return {
        split: MultiTaskDataset(
            torch.from_numpy(arrays[f"{split}_x"][:, None]),
            {task: torch.from_numpy(arrays[f"{split}_y"][:, k]) for k, task in enumerate(TASKS)},
        )
        for split in ("train", "val", "test")
    }


class MultiMNIST:
    """The three splits of MultiMNIST with their tasks (``left``, ``right``: 10 classes).

    Attributes ``train``, ``val``, ``test`` are in-memory datasets of ``(image [1, 28, 28]
    float32 in [0, 1], {"left", "right": int64}, masks)``.
    """

    task_names = list(TASKS)

    def __init__(
        self,
        root: str | Path,
        seed: int = 0,
        val_size: int = 10_000,
        cache_dir: str | Path | None = None,
    ) -> None:
        splits = load_multimnist(root, seed=seed, val_size=val_size, cache_dir=cache_dir)
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]
        self._tasks: list[Any] | None = None

    @property
    def tasks(self) -> list[Any]:
        if self._tasks is None:
            from taskbalance.tasks import classification_task

            self._tasks = [classification_task(name, 10) for name in TASKS]
        return self._tasks

    input_shape = (1, SIZE, SIZE)
