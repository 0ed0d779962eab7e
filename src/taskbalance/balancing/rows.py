"""Per-task feature gradients kept as autograd returned them: a ``[n, F]`` matrix never stacked.

Rep mode's J (the gradients of the task losses w.r.t. the shared features) arrives as one
tensor per task and feature tensor. Copying them into one ``[n, F]`` matrix costs a pass over
J and, for a large J, a fresh allocation whose pages fault in every step. The Gramian and
``d = wᵀJ`` only need J column chunk by column chunk, so :class:`TaskRows` stacks one chunk at a
time (small, cache-resident); methods that need J itself get :meth:`TaskRows.stack`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["TaskRows", "column_chunks"]

#: Entries per stacked chunk on the CPU (float32: 1 MiB, about a core's L2 cache).
CHUNK_ELEMENTS = 1 << 18


class TaskRows:
    """Row t: task t's gradient w.r.t. each feature tensor (``None``: the loss does not reach
    that tensor, a zero block), flattened and concatenated in the order of ``features``."""

    def __init__(self, grads: Sequence[Sequence[Tensor | None]], features: Sequence[Tensor]):
        self.features = list(features)
        self.grads = [list(g) for g in grads]
        first = self.features[0]
        self.dtype = first.dtype
        self.device = first.device
        self.numels = [f.numel() for f in self.features]
        self.shape = (len(self.grads), sum(self.numels))

    def _block(self, t: int, i: int) -> Tensor | None:
        g = self.grads[t][i]
        return None if g is None else g.reshape(-1)

    def chunks(self, step: int) -> Iterator[Tensor]:
        """``[n, c]`` column chunks of J (at most ``step`` columns), in column order.

        On the CPU a chunk is also kept to about ``CHUNK_ELEMENTS`` entries, so the stacked
        chunk stays in a core's cache while its product is taken."""
        n = self.shape[0]
        if self.device.type == "cpu":
            step = min(step, max(1024, 1 << (CHUNK_ELEMENTS // max(n, 1)).bit_length() - 1))
        for i, numel in enumerate(self.numels):
            blocks = [self._block(t, i) for t in range(n)]
            for start in range(0, numel, step):
                stop = min(start + step, numel)
                parts = [
                    b[start:stop] if b is not None else self._zeros(stop - start) for b in blocks
                ]
                yield torch.stack(parts)

    def _zeros(self, size: int) -> Tensor:
        return torch.zeros(size, dtype=self.dtype, device=self.device)

    def stack(self) -> Tensor:
        """J as one ``[n, F]`` tensor (for methods that need J itself)."""
        n, F = self.shape
        J = torch.empty(n, F, dtype=self.dtype, device=self.device)
        offset = 0
        for i, numel in enumerate(self.numels):
            for t in range(n):
                block = self._block(t, i)
                target = J[t, offset : offset + numel]
                if block is None:
                    target.zero_()
                else:
                    target.copy_(block)
            offset += numel
        return J

    def combine(self, w: Tensor, step: int) -> Tensor:
        """``wᵀJ`` (``[F]``), one column chunk at a time (``w`` in J's dtype and device)."""
        d = torch.empty(self.shape[1], dtype=self.dtype, device=self.device)
        start = 0
        for Jc in self.chunks(step):
            torch.mm(w[None], Jc, out=d[None, start : start + Jc.shape[1]])
            start += Jc.shape[1]
        return d

    def feature_cotangents(self) -> list[Tensor]:
        """Per feature tensor, the rows as a batch of cotangents ``[n, *f.shape]``."""
        out = []
        for i, f in enumerate(self.features):
            blocks = [self.grads[t][i] for t in range(self.shape[0])]
            out.append(torch.stack([torch.zeros_like(f) if b is None else b for b in blocks]))
        return out


def column_chunks(J: Tensor | TaskRows, step: int) -> Iterator[Tensor]:
    """``[n, c]`` column chunks of a J held as one tensor or as :class:`TaskRows`."""
    if isinstance(J, TaskRows):
        yield from J.chunks(step)
        return
    for start in range(0, J.shape[1], step):
        yield J[:, start : start + step]
