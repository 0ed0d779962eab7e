"""Kaggle "Fingers" (count the raised fingers, tell the left hand from the right).

The dataset (https://www.kaggle.com/datasets/koryakinp/fingers) has 128 x 128 grayscale PNGs::

    <root>/train/<id>_<count><L|R>.png      e.g. 000e7aa6-100b-4c6b-9ff0-e7a8e53e4465_3L.png
    <root>/test/<id>_<count><L|R>.png

Tasks: ``count`` (0-5 fingers, 6 classes) and ``hand`` (0 = left ``L``, 1 = right ``R``).
PNGs are read with Pillow. Nothing is downloaded: point ``root`` at a copy you already have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["HANDS", "Fingers"]

HANDS = ("left", "right")
MAX_COUNT = 5
_NAME = re.compile(r"^(?P<id>.+)_(?P<count>[0-9]+)(?P<hand>[A-Za-z]+)\.png$", re.IGNORECASE)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow ships with matplotlib
        raise ImportError(
            "reading the Kaggle Fingers PNG files needs Pillow; "
            "install it with `pip install pillow`"
        ) from err
    return Image


class Fingers(Dataset):
    """One split of Kaggle Fingers.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"`` (the folder name).
        image_size: resize images to ``image_size x image_size`` (default: keep 128 x 128).

    Items are ``(image [1, S, S] float32 in [0, 1], {"count": int64, "hand": int64}, masks)``.

    Raises:
        FileNotFoundError: missing root or split folder, or no PNG in it.
        ValueError: a file name not of the form ``<id>_<count><L|R>.png``, a count above 5 or a
            hand other than L/R (the message names the file).
        ImportError: Pillow is not installed.
    """

    def __init__(
        self, root: str | Path, split: str = "train", image_size: int | None = None
    ) -> None:
        self._image = _pillow()
        self.root = Path(root).expanduser()
        self.split = split
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        self.image_size = image_size
        layout = "<root>/{train,test}/<id>_<count><L|R>.png"
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"Fingers: folder {str(folder)!r} not found; expected {layout}")
        files, counts, hands = [], [], []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            match = _NAME.match(path.name)
            if not match:
                raise ValueError(
                    f"Fingers: malformed file name {str(path)!r}; expected <id>_<count><L|R>.png "
                    "such as abc123_3L.png"
                )
            count, hand = int(match["count"]), match["hand"].upper()
            if count > MAX_COUNT:
                raise ValueError(
                    f"Fingers: unknown finger count {count} in {str(path)!r}; "
                    f"expected 0..{MAX_COUNT}"
                )
            if hand not in ("L", "R"):
                raise ValueError(
                    f"Fingers: unknown hand {match['hand']!r} in {str(path)!r}; expected L or R"
                )
            files.append(path)
            counts.append(count)
            hands.append(0 if hand == "L" else 1)
        if not files:
            raise FileNotFoundError(f"Fingers: no PNG files in {str(folder)!r}; expected {layout}")
        self.files = files
        self.counts = torch.tensor(counts, dtype=torch.int64)
        self.hands = torch.tensor(hands, dtype=torch.int64)
        self._tasks: list[Any] | None = None

    task_names = ["count", "hand"]

    @property
    def tasks(self) -> list[Any]:
        """``classification_task("count", 6)`` and ``classification_task("hand", 2)``."""
        if self._tasks is None:
            from taskbalance.tasks import classification_task

            self._tasks = [
                classification_task("count", MAX_COUNT + 1),
                classification_task("hand", len(HANDS)),
            ]
        return self._tasks

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (from the first image)."""
        return tuple(self[0][0].shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            with self._image.open(path) as img:
                img = img.convert("L")
                if self.image_size is not None and img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size, self.image_size), self._image.BILINEAR)
                array = np.asarray(img, dtype=np.float32) / 255.0
        except OSError as err:
            raise ValueError(f"Fingers: cannot read image {str(path)!r}: {err}") from err
        inputs = torch.from_numpy(array.copy())[None]
        targets = {"count": self.counts[i], "hand": self.hands[i]}
        masks = {"count": torch.tensor(True), "hand": torch.tensor(True)}
        return inputs, targets, masks
