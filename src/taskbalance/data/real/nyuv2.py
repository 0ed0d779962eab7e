"""NYUv2 and Cityscapes in the preprocessed ``.npy`` layout of MTAN / Nash-MTL / LibMTL.

NYUv2 (Silberman et al., ECCV 2012) with 13 semantic classes, depth and surface normals, as
preprocessed by Liu et al. for MTAN (https://github.com/lorenmt/mtan)::

    <root>/train|val/image/<i>.npy    H x W x 3 float (288 x 384 in the release)
    <root>/train|val/label/<i>.npy    H x W, 13 classes, -1 = ignore (converted to 255)
    <root>/train|val/depth/<i>.npy    H x W x 1, 0 = invalid
    <root>/train|val/normal/<i>.npy   H x W x 3

Cityscapes in the same layout (``image``, ``label_7``, ``label_19`` or ``label_2``, ``depth``;
128 x 256); LibMTL's copy keeps the 7-class labels in ``label``.
Nothing is downloaded: point ``root`` at a copy you already have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskbalance.data.real._npy import IGNORE_INDEX, NpyLayoutDataset

__all__ = ["CITYSCAPES_CLASSES", "IGNORE_INDEX", "NYUV2_CLASSES", "Cityscapes", "NYUv2"]

NYUV2_CLASSES = 13


class NYUv2(NpyLayoutDataset):
    """One split of NYUv2 (tasks ``segmentation``, ``depth``, ``normals``).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"`` (the folder name).

    Raises:
        FileNotFoundError: a missing folder or file (the message names it and the layout).
        ValueError: a malformed file name, a file of the wrong shape or an unknown label.
    """

    dataset_name = "NYUv2"

    def __init__(self, root: str | Path, split: str = "train") -> None:
        super().__init__(
            root,
            split,
            {
                "segmentation": ("label", "label"),
                "depth": ("depth", "depth"),
                "normals": ("normal", "normal"),
            },
            NYUV2_CLASSES,
        )

    def _make_tasks(self) -> list[Any]:
        from taskbalance.tasks import depth_task, normal_task, segmentation_task

        return [
            segmentation_task("segmentation", NYUV2_CLASSES, ignore_index=IGNORE_INDEX),
            depth_task("depth"),
            normal_task("normals"),
        ]


CITYSCAPES_CLASSES = (2, 7, 19)


class Cityscapes(NpyLayoutDataset):
    """One split of Cityscapes (tasks ``segmentation`` with 7, 19 or 2 classes, ``depth``).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        num_classes: 7 (reads ``label_7/``, or ``label/`` of LibMTL's copy when there is no
            ``label_7/``), 19 (``label_19/``) or 2 (``label_2/``).
    """

    dataset_name = "Cityscapes"

    def __init__(self, root: str | Path, split: str = "train", num_classes: int = 7) -> None:
        if num_classes not in CITYSCAPES_CLASSES:
            raise ValueError(f"Cityscapes num_classes must be 2, 7 or 19, got {num_classes!r}")
        folder = f"label_{num_classes}"
        split_dir = Path(root).expanduser() / split
        if num_classes == 7 and not (split_dir / folder).is_dir():
            if (split_dir / "label").is_dir():
                folder = "label"  # LibMTL's copy of MTAN's files names the 7-class folder label/
        super().__init__(
            root,
            split,
            {"segmentation": (folder, "label"), "depth": ("depth", "depth")},
            num_classes,
        )

    def _make_tasks(self) -> list[Any]:
        from taskbalance.tasks import depth_task, segmentation_task

        return [
            segmentation_task("segmentation", self.num_classes, ignore_index=IGNORE_INDEX),
            depth_task("depth"),
        ]
