"""Shared checks of methods that take the logarithm of the task losses (GLS, STCH, DB-MTL)."""

from __future__ import annotations

from torch import Tensor


def require_loss_sign(losses: Tensor, present: Tensor | None, method: str, *, strict: bool) -> None:
    """Raise a clear error when a present task's loss is negative (or zero when ``strict``).

    The logarithm of such a loss is undefined (or ``-inf`` with an undefined gradient), so these
    methods cannot balance it. One host synchronisation, like the Balancer's finite check.
    """
    L = losses.detach()
    bad = (L <= 0) if strict else (L < 0)
    if present is not None:
        bad = bad & present.to(device=L.device, dtype=bad.dtype)
    if bool(bad.any()):
        t = int(bad.nonzero()[0, 0])
        need = "positive" if strict else "non-negative"
        hint = " (or pass eps > 0)" if strict else ""
        raise ValueError(
            f"method {method!r} takes the logarithm of the losses and needs {need} losses, but "
            f"the loss of task {t} is {float(L[t])}; use a {need} loss for that task{hint}"
        )
