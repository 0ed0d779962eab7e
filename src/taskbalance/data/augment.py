"""Training-time augmentation of dense multi-task samples (image + per-pixel targets).

:class:`ScaleCropFlip` is the augmentation of the NYUv2 / Cityscapes protocol of CAGrad (Liu et
al., NeurIPS 2021) and Nash-MTL (Navon et al., ICML 2022), whose code credits it to
https://github.com/lorenmt/mtan/issues/34: pick a scale ``s`` from ``(1.0, 1.2, 1.5)``, crop a
random ``H/s x W/s`` window, resize it back to ``H x W`` (image and normals bilinear with
``align_corners=True``, labels and depth nearest), divide depth by ``s`` (zooming in brings the
scene closer), then flip horizontally with probability 1/2 (negating the normals' x component).

Random draws use torch's global generator, which the trainer seeds and the DataLoader seeds per
worker, so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

__all__ = ["DENSE_KINDS", "AugmentedDataset", "ScaleCropFlip"]

#: Target kinds :class:`ScaleCropFlip` knows: label map ``int64 [H, W]``, depth ``[1, H, W]``,
#: normals ``[3, H, W]``.
DENSE_KINDS = ("label", "depth", "normal")


class ScaleCropFlip:
    """Random scale-crop and horizontal flip of ``(image, targets, masks)``.

    Args:
        kinds: task name -> ``"label"``, ``"depth"`` or ``"normal"``; tasks not named are
            passed through unchanged.
        scales: the scales drawn uniformly (each >= 1).
        flip: also flip horizontally with probability 1/2.
    """

    def __init__(
        self,
        kinds: Mapping[str, str],
        scales: Sequence[float] = (1.0, 1.2, 1.5),
        flip: bool = True,
    ) -> None:
        bad = {t: k for t, k in kinds.items() if k not in DENSE_KINDS}
        if bad:
            raise ValueError(f"unknown target kind(s) {bad}; expected one of {DENSE_KINDS}")
        if not scales or any(float(s) < 1.0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of numbers >= 1, got {scales!r}")
        self.kinds = dict(kinds)
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)

    @staticmethod
    def _resize(x: torch.Tensor, size: tuple[int, int], bilinear: bool) -> torch.Tensor:
        if bilinear:
            return F.interpolate(x[None], size=size, mode="bilinear", align_corners=True)[0]
        return F.interpolate(x[None].float(), size=size, mode="nearest")[0].to(x.dtype)

    def __call__(self, image: torch.Tensor, targets: dict, masks: dict) -> tuple:
        height, width = image.shape[-2:]
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        h, w = int(height / scale), int(width / scale)
        top = int(torch.randint(height - h + 1, ()))
        left = int(torch.randint(width - w + 1, ()))
        flip = self.flip and bool(torch.rand(()) < 0.5)

        def crop(x: torch.Tensor) -> torch.Tensor:
            return x[..., top : top + h, left : left + w]

        image = self._resize(crop(image), (height, width), bilinear=True)
        out = dict(targets)
        for task, kind in self.kinds.items():
            target = out[task]
            if kind == "label":
                target = self._resize(crop(target)[None], (height, width), bilinear=False)[0]
            elif kind == "depth":
                target = self._resize(crop(target), (height, width), bilinear=False) / scale
            else:
                target = self._resize(crop(target), (height, width), bilinear=True)
            out[task] = target
        if flip:
            image = image.flip(-1)
            for task, kind in self.kinds.items():
                out[task] = out[task].flip(-1)
                if kind == "normal":
                    out[task] = out[task] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        return image, out, masks


class AugmentedDataset(Dataset):
    """``dataset`` with ``transform(image, targets, masks)`` applied to every item read.

    Attributes the model factories use (``tasks``, ``task_names``, ``input_shape``) are
    forwarded to the wrapped dataset.
    """

    def __init__(self, dataset: Dataset, transform: ScaleCropFlip) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        image, targets, masks = self.dataset[i]
        return self.transform(image, targets, masks)

    def __getattr__(self, name: str):
        if name in ("dataset", "transform"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
