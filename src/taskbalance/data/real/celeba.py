"""CelebA face attributes (Liu et al., ICCV 2015) in the layout of the official release.

The 40 binary attributes as 40 tasks, the multi-task setting of Sener & Koltun (NeurIPS 2018,
https://arxiv.org/abs/1810.04650, Sec. 6.2) and of the methods that follow it::

    <root>/img_align_celeba/000001.jpg ...   aligned, cropped 178 x 218 JPEGs
    <root>/list_attr_celeba.txt              line 1: image count; line 2: the 40 attribute
                                             names; then "<file> v_1 ... v_40", v in {-1, 1}
    <root>/list_eval_partition.txt           "<file> p", p = 0 train, 1 val, 2 test

Items are ``(image [3, S, S] float32 in [0, 1], {attribute: int64 0/1}, masks)`` with ``S =
image_size`` (64 in Sener & Koltun). JPEGs are decoded with Pillow, one at a time when read.
Nothing is downloaded: see ``docs/datasets.md#celeba`` for where to get the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CELEBA_ATTRIBUTES", "CELEBA_SPLITS", "CelebA", "read_attributes", "read_partition"]

CELEBA_SPLITS = {"train": 0, "val": 1, "test": 2}
#: The 40 attributes, in the order of line 2 of ``list_attr_celeba.txt`` (the task names).
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)
DOCS = "docs/datasets.md#celeba"
LAYOUT = (
    "<root>/img_align_celeba/<name>.jpg, <root>/list_attr_celeba.txt (count, 40 attribute "
    "names, then '<name>.jpg' and 40 values of -1/1 per line) and "
    "<root>/list_eval_partition.txt ('<name>.jpg 0|1|2' per line)"
)


def _layout_error(problem: str) -> str:
    return f"CelebA: {problem}; expected {LAYOUT} (see {DOCS})"


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(_layout_error(f"{str(path)!r} not found"))
    return [line for line in path.read_text().splitlines() if line.strip()]


def read_attributes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(attribute names, file names, labels [N, 40] int64 in {0, 1})`` of
    ``list_attr_celeba.txt`` (-1 becomes 0)."""
    path = Path(path)
    lines = _lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise ValueError(_layout_error(f"{str(path)!r} must start with the image count"))
    count, names = int(lines[0]), lines[1].split()
    if tuple(names) != CELEBA_ATTRIBUTES:
        odd = [n for n in names if n not in CELEBA_ATTRIBUTES][:3] or names[:3]
        raise ValueError(
            _layout_error(
                f"line 2 of {str(path)!r} must name the 40 CelebA attributes in the release's "
                f"order ({CELEBA_ATTRIBUTES[0]} ... {CELEBA_ATTRIBUTES[-1]}); it names "
                f"{len(names)}, e.g. {odd}"
            )
        )
    rows = lines[2:]
    if len(rows) != count:
        raise ValueError(
            _layout_error(f"{str(path)!r} announces {count} images but lists {len(rows)}")
        )
    files: list[str] = []
    values = np.empty((len(rows), NUM_ATTRIBUTES), dtype=np.int64)
    for i, row in enumerate(rows):
        parts = row.split()
        if len(parts) != NUM_ATTRIBUTES + 1 or any(v not in ("-1", "1") for v in parts[1:]):
            raise ValueError(
                _layout_error(
                    f"line {i + 3} of {str(path)!r} is not a file name and 40 values -1/1"
                )
            )
        files.append(parts[0])
        values[i] = [v == "1" for v in parts[1:]]
    return names, files, values


def read_partition(path: str | Path) -> dict[str, int]:
    """``{file name: 0 | 1 | 2}`` of ``list_eval_partition.txt``."""
    path = Path(path)
    out: dict[str, int] = {}
    for i, row in enumerate(_lines(path)):
        parts = row.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(
                _layout_error(f"line {i + 1} of {str(path)!r} is not '<name>.jpg 0|1|2'")
            )
        out[parts[0]] = int(parts[1])
    return out


class CelebA(Dataset):
    """One split of CelebA with the 40 attributes as binary classification tasks.

    Args:
        root: the folder holding ``img_align_celeba/`` and the two list files.
        split: ``"train"``, ``"val"`` or ``"test"`` (partition 0, 1, 2).
        image_size: images are resized (bilinear) to ``image_size x image_size``.

    Raises:
        FileNotFoundError: a missing folder, list file or image (named, with the layout).
        ValueError: a malformed list file, an unknown split, or list files that disagree.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 64) -> None:
        from taskbalance.data.real.fingers import _pillow

        self._image = _pillow()
        if split not in CELEBA_SPLITS:
            raise ValueError(f"CelebA split must be one of {list(CELEBA_SPLITS)}, got {split!r}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.root = Path(root).expanduser()
        self.split, self.image_size = split, image_size
        if not self.root.is_dir():
            raise FileNotFoundError(_layout_error(f"root {str(self.root)!r} does not exist"))
        self.image_dir = self.root / "img_align_celeba"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(_layout_error(f"folder {str(self.image_dir)!r} not found"))
        names, files, labels = read_attributes(self.root / "list_attr_celeba.txt")
        partition = read_partition(self.root / "list_eval_partition.txt")
        missing = [f for f in files if f not in partition]
        if missing:
            raise ValueError(
                _layout_error(
                    f"{missing[0]!r} (and {len(missing) - 1} more) of "
                    "list_attr_celeba.txt has no line in list_eval_partition.txt"
                )
            )
        keep = np.array([partition[f] == CELEBA_SPLITS[split] for f in files], dtype=bool)
        self.attributes = names
        self.files = [f for f, k in zip(files, keep, strict=True) if k]
        if not self.files:
            raise ValueError(
                _layout_error(f"no image of split {split!r} in list_eval_partition.txt")
            )
        self.labels = torch.from_numpy(labels[keep])
        self._tasks: list[Any] | None = None
        self[0]  # the first image must exist and decode

    @property
    def task_names(self) -> list[str]:
        """The 40 attribute names, in file order."""
        return list(self.attributes)

    @property
    def tasks(self) -> list[Any]:
        """One 2-class ``classification_task`` per attribute."""
        if self._tasks is None:
            from taskbalance.tasks import classification_task

            self._tasks = [classification_task(name, 2) for name in self.attributes]
        return self._tasks

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(_layout_error(f"image {str(path)!r} not found"))
        try:
            with self._image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size, self.image_size), self._image.BILINEAR)
                return np.asarray(img, dtype=np.float32) / 255.0
        except OSError as err:
            raise ValueError(f"CelebA: cannot decode image {str(path)!r}: {err}") from err

    def __getitem__(self, i: int):
        array = self._read(self.image_dir / self.files[i])
        inputs = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        row = self.labels[i]
        targets = {name: row[k] for k, name in enumerate(self.attributes)}
        masks = {name: torch.tensor(True) for name in self.attributes}
        return inputs, targets, masks
