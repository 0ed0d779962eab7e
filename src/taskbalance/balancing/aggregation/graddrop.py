"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from taskbalance.validation import is_number

from ..base import GradientMethod, make_generator
from ..registry import register
from ..solvers import chunk_columns

__all__ = ["GradDrop"]


@register(
    "graddrop",
    paper="Chen et al., Just pick a sign: optimizing deep multitask models with gradient sign "
    "dropout, NeurIPS 2020, https://arxiv.org/abs/2010.06808",
)
class GradDrop(GradientMethod):
    """GradDrop: per coordinate, keep only the gradients of one randomly chosen sign.

    Per coordinate ``k`` of ``J``: the positive sign purity
    ``P = ½(1 + Σ_i g_ik / Σ_i |g_ik|)`` (``P = ½`` where every ``g_ik`` is 0 - nothing to keep
    there anyway), ``U ~ U(0, 1)`` and the masks
    ``M_i = 1[P > U]·1[g_i > 0] + 1[P < U]·1[g_i < 0]``; then
    ``d = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i`` with the leak parameters ``ℓ_i`` (``ℓ_i = 1`` lets
    task i's gradient through unmasked, ``0`` is plain GradDrop).

    Meant for rep mode (``Balancer(..., mode="rep")``, ``J`` = gradients w.r.t. the shared
    features), as in the paper. Differences from the paper, on purpose: ``P`` is computed per
    coordinate of ``J`` - per sample *and* feature in rep mode - rather than from gradients summed
    over the batch, and the gradients are not multiplied by the sign of the activations (the
    method only sees ``J``). ``f`` is the identity. GradDrop has no per-task weights
    (``last_weights`` is ``None``).

    Args:
        leak: ``ℓ`` in ``[0, 1]``, one number for every task or one per task (default 0).
        seed: an int, a ``torch.Generator`` (CPU or on the gradients' device; a device
            generator avoids drawing ``P`` numbers on the CPU) or ``None`` (the global RNG of
            the gradients' device) for ``U``.

    Paper: https://arxiv.org/abs/2010.06808
    """

    prefers_rep_mode = True
    leak: Tensor

    def __init__(
        self,
        num_tasks: int,
        leak: float | Sequence[float] = 0.0,
        seed: int | torch.Generator | None = None,
    ) -> None:
        super().__init__(num_tasks)
        values = [leak] * num_tasks if isinstance(leak, (int, float)) else list(leak)
        if len(values) != num_tasks or not all(
            is_number(v) and math.isfinite(v) and 0 <= v <= 1 for v in values
        ):
            raise ValueError(
                f"leak must be a number in [0, 1] or {num_tasks} such numbers (one per task), "
                f"got {leak!r}"
            )
        self.register_buffer("leak", torch.tensor([float(v) for v in values], dtype=torch.float64))
        self.seed = seed
        self.generator = make_generator(seed)

    def reset(self) -> None:
        super().reset()
        self.generator = make_generator(self.seed)

    def _uniform(self, P: int, J: Tensor) -> Tensor:
        g = self.generator
        if g is None:
            return torch.rand(P, device=J.device, dtype=J.dtype)
        return torch.rand(P, generator=g, device=g.device, dtype=J.dtype).to(J.device)

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        self.last_weights = None
        leak = self.leak.to(device=J.device, dtype=J.dtype)
        if present is not None:
            leak = leak[present.to(J.device)]
        U = self._uniform(J.shape[1], J)
        d = _direction(J, U, leak)
        big = torch.finfo(J.dtype).max
        return d.nan_to_num_(nan=0.0, posinf=big, neginf=-big)


#: Columns per chunk of :func:`_direction` on the CPU: its temporaries (``[T, 2c]`` and a few
#: ``[c]``) are allocated once and reused, so larger chunks mean fewer, longer kernels.
CHUNK = 1 << 15


def _direction(J: Tensor, U: Tensor, leak: Tensor) -> Tensor:
    """GradDrop's ``d`` (before the finite clamp), chunk by chunk, in reused buffers.

    Split J = pos + neg by sign: every per-coordinate quantity is then a product of the
    ``[3, T]`` matrix ``A`` (rows 1, ℓ, 1 - ℓ) with pos or neg, and the masks act on vectors::

        Σ_i g_i = S⁺ + S⁻,   Σ_i |g_i| = S⁺ − S⁻,
        d = ℓ·pos + ℓ·neg + 1[P > U]·(1 − ℓ)·pos + 1[P < U]·(1 − ℓ)·neg.

    ``A`` multiplies ``[pos | neg]`` side by side (one product per chunk); every vector step
    writes into a buffer of the chunk. The numbers are those of the plain expressions.
    """
    n, P = J.shape
    A = torch.stack([torch.ones_like(leak), leak, 1.0 - leak])
    d = J.new_empty(P)
    c = max(1, min(CHUNK if J.device.type == "cpu" else chunk_columns(J.device), P))
    parts = J.new_empty(n, 2 * c)
    sums = J.new_empty(3, 2 * c)
    ratio, mass = J.new_empty(c), J.new_empty(c)
    mask = torch.empty(c, dtype=torch.bool, device=J.device)
    zero = J.new_zeros(())
    for start in range(0, P, c):
        Jc = J[:, start : start + c]
        w = Jc.shape[1]
        pos, neg = parts[:, :w], parts[:, c : c + w]
        torch.clamp_min(Jc, 0.0, out=pos)
        torch.sub(Jc, pos, out=neg)
        if w == c:
            torch.mm(A, parts, out=sums)
            sp, sn = sums[:, :c], sums[:, c:]
        else:
            sp, sn = A @ pos, A @ neg
        r, m, keep = ratio[:w], mass[:w], mask[:w]
        torch.add(sp[0], sn[0], out=r)
        torch.sub(sp[0], sn[0], out=m)
        torch.gt(m, 0, out=keep)
        r.div_(m).masked_fill_(keep.logical_not_(), 0.0)  # the sign ratio; 0 where no gradient
        purity = r.clamp_(-1.0, 1.0).add_(1.0).mul_(0.5)
        Uc = U[start : start + w]
        out = d[start : start + w]
        torch.add(sp[1], sn[1], out=out)
        torch.gt(purity, Uc, out=keep)
        out.add_(torch.where(keep, sp[2], zero))
        torch.lt(purity, Uc, out=keep)
        out.add_(torch.where(keep, sn[2], zero))
    return d
