"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
            the gradients' device) for ``U``: the numbers of one ``torch.rand(P)`` per step
            (drawn chunk by chunk on the CPU: the same numbers). ``U`` has 24 random bits in
            float32 (53 in float64), so ``Pr(U < P)`` equals ``P`` to ``2⁻²⁴`` (``2⁻⁵³``).

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

    def _uniforms(self, J: Tensor) -> Callable[[int, Tensor], Tensor]:
        """``U`` chunk by chunk: ``draw(start, buffer)`` returns the ``len(buffer)`` numbers of
        the columns from ``start``, in column order; always the numbers of one ``torch.rand(P)``
        with the generator (or the global RNG)."""
        g = self.generator
        if J.device.type == "cpu" and (g is None or g.device.type == "cpu"):
            # The CPU generator fills a tensor element by element, so filling a reused chunk
            # buffer gives the numbers of one [P] draw (tested) without a fresh [P] tensor
            # (whose page faults cost as much as the draw itself).
            return lambda start, buffer: buffer.uniform_(generator=g)
        if g is None:
            U = torch.rand(J.shape[1], device=J.device, dtype=J.dtype)
        else:
            U = torch.rand(J.shape[1], generator=g, device=g.device, dtype=J.dtype).to(J.device)
        return lambda start, buffer: U[start : start + buffer.shape[0]]

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        self.last_weights = None
        leak = self.leak if present is None else self.leak[present.cpu()]
        if not bool(leak.any()):  # plain GradDrop (the host buffer: no device read)
            return _direction(J, None, self._uniforms(J))
        d = _direction(J, leak.to(device=J.device, dtype=J.dtype), self._uniforms(J))
        big = torch.finfo(J.dtype).max
        return d.nan_to_num_(nan=0.0, posinf=big, neginf=-big)


#: Elements of ``J`` per chunk of :func:`_direction` on the CPU (``CHUNK // T`` columns): its
#: temporaries (one ``[T, c]``, a few ``[c]``) are allocated once and reused, and a chunk stays
#: in the cache between its steps; measured best at T = 2 to 40 (2 MB of float32).
CHUNK = 1 << 19


def _direction(J: Tensor, leak: Tensor | None, draw: Callable[[int, Tensor], Tensor]) -> Tensor:
    """GradDrop's ``d``, chunk by chunk, in reused buffers (``leak=None``: every ``ℓ_i = 0``).

    Split J = pos + neg by sign; with ``S⁺ = Σ_i pos_i``, ``S⁻ = Σ_i neg_i``::

        P = ½(1 + (S⁺ + S⁻) / (S⁺ − S⁻)),
        d = Σ_i ℓ_i·pos_i + Σ_i ℓ_i·neg_i + 1[P > U]·Σ_i (1 − ℓ_i)·pos_i
            + 1[P < U]·Σ_i (1 − ℓ_i)·neg_i.

    With leaks, the sums are the rows of ``A @ pos`` and ``A @ neg`` for the ``[3, T]`` matrix
    ``A`` (rows 1, ℓ, 1 − ℓ); without, the column sums. Where every ``g_ik`` is 0, ``P`` is NaN
    (0/0): neither indicator holds, and the sums there are 0 anyway (the paper's ``P = ½`` gives
    the same ``d``). The indicators are 0/1 numbers multiplied in (a ``where`` on a random mask
    costs 25x more on the CPU: a branch per element); the kept sums are first clamped to the
    finite range (an overflowing sum becomes ``±max``, as the final clamp of ``d`` would make
    it), so that ``0·Inf`` never makes a NaN. Without leaks ``d`` is then finite; with leaks the
    caller clamps it.
    """
    n, P = J.shape
    rows = 1 if leak is None else 3
    A = None if leak is None else torch.stack([torch.ones_like(leak), leak, 1.0 - leak])
    c = max(1, min(_columns(n, J.device), P))
    part = J.new_empty(n, c)  # pos, then neg: one buffer keeps the chunk's work in the cache
    sums_p, sums_n = J.new_empty(rows, c), J.new_empty(rows, c)
    purity, u, up, un = (J.new_empty(c) for _ in range(4))
    big = torch.finfo(J.dtype).max
    d = J.new_empty(P)
    for start in range(0, P, c):
        Jc = J[:, start : start + c]
        w = Jc.shape[1]
        sp = _row_sums(torch.clamp_min(Jc, 0.0, out=part[:, :w]), A, sums_p, w)
        sn = _row_sums(torch.clamp_max(Jc, 0.0, out=part[:, :w]), A, sums_n, w)
        r = purity[:w]
        torch.add(sp[0], sn[0], out=r)
        r.div_(torch.sub(sp[0], sn[0], out=up[:w])).clamp_(-1.0, 1.0).add_(1.0).mul_(0.5)
        U = draw(start, u[:w])
        kp, kn = torch.gt(r, U, out=up[:w]), torch.lt(r, U, out=un[:w])
        out = d[start : start + w]
        if A is None:
            torch.mul(sp[0].clamp_max_(big), kp, out=out)
        else:
            torch.add(sp[1], sn[1], out=out).addcmul_(sp[2].clamp_max_(big), kp)
        out.addcmul_(sn[-1].clamp_min_(-big), kn)
    return d


def _columns(n: int, device: torch.device) -> int:
    """Columns per chunk of :func:`_direction` for ``n`` rows: on the CPU ``CHUNK // n``, a
    multiple of 64 when larger (some uneven widths made the column sums round differently)."""
    if device.type != "cpu":
        return chunk_columns(device)
    c = CHUNK // n
    return c - c % 64 if c > 64 else max(c, 1)


def _row_sums(part: Tensor, A: Tensor | None, buffer: Tensor, w: int) -> Tensor:
    """``[rows, w]``: the column sums of ``part`` (``A`` None) or ``A @ part``, in ``buffer``."""
    if A is None:
        return torch.sum(part, 0, keepdim=True, out=buffer[:, :w])
    if w == buffer.shape[1]:
        return torch.mm(A, part, out=buffer)
    return A @ part
