"""Shared reader for the preprocessed ``.npy`` layout of NYUv2 and Cityscapes.

The layout (from MTAN, https://github.com/lorenmt/mtan, also used by Nash-MTL and LibMTL)::

    <root>/<split>/<modality>/<index>.npy      split: train | val;  index: 0, 1, 2, ...

with ``image`` ``H x W x 3`` float in [0, 1], a label map ``H x W`` with ``-1`` for ignored pixels,
``depth`` ``H x W x 1`` (0 = invalid) and, for NYUv2, ``normal`` ``H x W x 3``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = 255
#: Slack on the value ranges checked ([0, 1] images, [-1, 1] normal components): rounding only.
_TOLERANCE = 1e-3
_INDEX_FILE = re.compile(r"^(0|[1-9][0-9]*)\.npy$")


class NpyLayoutDataset(Dataset):
    """A split of a dataset in the preprocessed ``.npy`` layout.

    Args:
        root: dataset root (holding ``train/`` and ``val/``).
        split: sub-folder name, ``"train"`` or ``"val"``.
        modalities: task name -> ``(folder, kind)`` with kind ``"label"``, ``"depth"`` or
            ``"normal"``; the input always comes from ``image/``.
        num_classes: number of classes of the label maps.

    Items are ``(image [3, H, W] float32, targets, masks)`` with label maps as ``int64 [H, W]``
    (``-1`` converted to the ignore index 255), depth ``float32 [1, H, W]`` (non-finite values
    become 0 = invalid) and normals ``float32 [3, H, W]`` (a pixel with a non-finite component
    becomes the zero vector = invalid). Files are read lazily; the folder structure, the file
    names and the first sample are checked on construction, every sample on :meth:`validate` or
    when it is read.
    """

    dataset_name = "dataset"

    def __init__(
        self,
        root: str | Path,
        split: str,
        modalities: Mapping[str, tuple[str, str]],
        num_classes: int,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.modalities = dict(modalities)
        self.num_classes = int(num_classes)
        folders = ["image", *(folder for folder, _ in self.modalities.values())]
        layout = f"<root>/{{train,val}}/{{{','.join(folders)}}}/<index>.npy"
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.dataset_name} root {str(self.root)!r} does not exist; expected {layout}"
            )
        split_dir = self.root / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"{self.dataset_name}: split folder {str(split_dir)!r} not found (folders in root: "
                f"{found}); expected {layout}"
            )
        self.split_dir = split_dir
        indices: dict[str, list[int]] = {}
        for folder in folders:
            path = split_dir / folder
            if not path.is_dir():
                raise FileNotFoundError(
                    f"{self.dataset_name}: folder {str(path)!r} not found; expected {layout}"
                )
            found_idx = []
            for file in path.iterdir():
                if file.name.startswith("."):
                    continue
                match = _INDEX_FILE.match(file.name)
                if not match:
                    raise ValueError(
                        f"{self.dataset_name}: unexpected file {str(file)!r}; expected files named "
                        "<index>.npy with a non-negative integer index (e.g. 0.npy)"
                    )
                found_idx.append(int(match.group(1)))
            indices[folder] = sorted(found_idx)
        self.indices = indices["image"]
        if not self.indices:
            raise FileNotFoundError(
                f"{self.dataset_name}: no .npy files in {str(split_dir / 'image')!r}"
            )
        image_set = set(self.indices)
        for folder, idx in indices.items():
            missing, extra = sorted(image_set - set(idx)), sorted(set(idx) - image_set)
            if missing:
                raise FileNotFoundError(
                    f"{self.dataset_name}: {str(split_dir / folder / f'{missing[0]}.npy')!r} is "
                    f"missing ({len(missing)} index(es) in image/ have no file in {folder}/)"
                )
            if extra:
                raise ValueError(
                    f"{self.dataset_name}: {str(split_dir / folder / f'{extra[0]}.npy')!r} has no "
                    f"matching image/{extra[0]}.npy"
                )
        self._tasks: list[Any] | None = None
        self[0]  # check the first sample's shapes now

    @property
    def task_names(self) -> list[str]:
        """Task names, in order."""
        return list(self.modalities)

    @property
    def tasks(self) -> list[Any]:
        """The :class:`taskbalance.tasks.Task` objects of this dataset (built on first access)."""
        if self._tasks is None:
            self._tasks = self._make_tasks()
        return self._tasks

    def _make_tasks(self) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (from the first sample)."""
        return tuple(self[0][0].shape)

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, folder: str, index: int) -> tuple[np.ndarray, Path]:
        path = self.split_dir / folder / f"{index}.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.dataset_name}: cannot read {str(path)!r}: {err}") from err
        return array, path

    def _shape_error(self, path: Path, array: np.ndarray, expected: str) -> ValueError:
        return ValueError(
            f"{self.dataset_name}: {str(path)!r} has shape {tuple(array.shape)}, "
            f"expected {expected}"
        )

    def __getitem__(self, i: int):
        index = self.indices[i]
        image, path = self._load("image", index)
        if image.ndim != 3 or image.shape[2] != 3:
            raise self._shape_error(path, image, "H x W x 3")
        height, width = image.shape[:2]
        inputs = torch.from_numpy(self._image(image, path).transpose(2, 0, 1).copy())
        targets: dict[str, torch.Tensor] = {}
        for task, (folder, kind) in self.modalities.items():
            array, path = self._load(folder, index)
            if kind == "label":
                if array.shape != (height, width):
                    raise self._shape_error(path, array, f"{height} x {width} (like the image)")
                targets[task] = torch.from_numpy(self._labels(array, path))
                continue
            if kind == "depth" and array.shape == (height, width):
                array = array[..., None]
            channels = 1 if kind == "depth" else 3
            if array.shape != (height, width, channels):
                raise self._shape_error(path, array, f"{height} x {width} x {channels}")
            self._check_float(array, path, kind)
            dense = self._depth(array, path) if kind == "depth" else self._normal(array, path)
            targets[task] = torch.from_numpy(np.ascontiguousarray(dense.transpose(2, 0, 1)))
        masks = {task: torch.tensor(True) for task in self.modalities}
        return inputs, targets, masks

    def _check_float(self, array: np.ndarray, path: Path, what: str) -> None:
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(
                f"{self.dataset_name}: {str(path)!r} has dtype {array.dtype}, expected a float "
                f"{what} array"
            )

    def _image(self, image: np.ndarray, path: Path) -> np.ndarray:
        """float32 ``H x W x 3`` in [0, 1]: ``uint8`` is divided by 255; a float image must
        already be in [0, 1] (MTAN's files are), so one scaled 0..255 is refused, not trained."""
        if image.dtype == np.uint8:
            return image.astype(np.float32) / 255.0
        self._check_float(image, path, "image")
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise ValueError(f"{self.dataset_name}: {str(path)!r} holds non-finite pixel values")
        low, high = float(image.min()), float(image.max())
        if low < -_TOLERANCE or high > 1 + _TOLERANCE:
            raise ValueError(
                f"{self.dataset_name}: {str(path)!r} has pixel values in [{low:g}, {high:g}], "
                "expected floats in [0, 1] (divide 0..255 images by 255, or save them as uint8)"
            )
        return image

    def _depth(self, array: np.ndarray, path: Path) -> np.ndarray:
        """float32 depth; non-finite values become 0 (= invalid); negative depth is refused."""
        depth = np.where(np.isfinite(array), array, 0.0).astype(np.float32)
        if (depth < 0).any():
            raise ValueError(
                f"{self.dataset_name}: {str(path)!r} holds negative depth {float(depth.min()):g}; "
                "expected depth >= 0 with 0 = no measurement"
            )
        return depth

    def _normal(self, array: np.ndarray, path: Path) -> np.ndarray:
        """float32 unit normals. A pixel with any non-finite component has no normal: the whole
        vector is zeroed (zeroing only the bad component would leave a wrong, still "valid"
        normal). Components outside [-1, 1] (e.g. normals stored as 0..255 colours) are refused.
        """
        finite = np.isfinite(array).all(axis=2, keepdims=True)
        normal = np.where(finite, array, 0.0).astype(np.float32)
        largest = float(np.abs(normal).max())
        if largest > 1 + _TOLERANCE:
            raise ValueError(
                f"{self.dataset_name}: {str(path)!r} has a normal component of magnitude "
                f"{largest:g}; expected unit normals with components in [-1, 1] (zero vector = "
                "no normal)"
            )
        return normal

    def _labels(self, array: np.ndarray, path: Path) -> np.ndarray:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(
                f"{self.dataset_name}: {str(path)!r} has dtype {array.dtype}, expected numbers"
            )
        if np.issubdtype(array.dtype, np.floating):
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError(f"{self.dataset_name}: {str(path)!r} holds non-integer labels")
        labels = array.astype(np.int64)
        ignore = (labels == -1) | (labels == IGNORE_INDEX)
        bad = ~ignore & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            values = sorted(set(np.unique(labels[bad]).tolist()))[:5]
            raise ValueError(
                f"{self.dataset_name}: {str(path)!r} holds unknown label(s) {values}; expected "
                f"0..{self.num_classes - 1} or -1 (ignored)"
            )
        labels[ignore] = IGNORE_INDEX
        return labels

    def validate(self) -> None:
        """Read every sample, raising ``ValueError`` at the first malformed file."""
        for i in range(len(self)):
            self[i]
