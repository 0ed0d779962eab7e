"""Per-task feature gradients written into one ``[n, F]`` matrix that is reused from step to step.

Rep mode's J (the gradients of the task losses w.r.t. the shared features) arrives as one
tensor per task and feature tensor. Held as autograd returns them, the T gradients are T fresh
allocations a step, whose pages fault in again every step on the CPU (at T=40 over a 1 MiB
feature map that cost a rep-mode step more than its Gramian). So each gradient is copied into
its row of a :class:`RowBuffer` matrix as soon as autograd produces it (while it is still in
cache; the original is then freed and its memory reused by the next head's backward), and the
matrix is kept for the next step. The Gramian, ``d = wᵀJ`` and the batched cotangents are then
plain products on, and views of, one contiguous matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RowBuffer", "feature_blocks"]


class RowBuffer:
    """One ``[n, F]`` matrix reused across steps (reallocated only when it must grow, or its
    dtype or device change). It holds ``n x F`` entries between steps: the memory of one
    step's J, which the step needs anyway."""

    def __init__(self) -> None:
        self._data: Tensor | None = None

    def matrix(self, n: int, F: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An ``[n, F]`` contiguous matrix (contents unspecified)."""
        data, size = self._data, n * F
        if data is None or data.dtype != dtype or data.device != device or data.numel() < size:
            self._data = None  # free the old one before allocating the new one
            self._data = data = torch.empty(size, dtype=dtype, device=device)
        return data[:size].view(n, F)


def feature_blocks(J: Tensor, features: Sequence[Tensor]) -> list[list[Tensor]]:
    """Per row t of ``J``, per feature tensor, the block of row t shaped like that feature
    (the features flattened and concatenated in order, as in ``J``'s columns)."""
    sizes = [f.numel() for f in features]
    return [
        [block.view(f.shape) for block, f in zip(row.split(sizes), features)] for row in J.unbind()
    ]
