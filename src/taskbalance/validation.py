"""Checks of user input shared by every layer (core: standard library and torch only).

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds; an option such as
``epochs=True`` must still be refused. :func:`is_int` and :func:`is_number` say whether a value is
a real integer / number and not a bool; the ``check_*`` functions raise one ``ValueError`` naming
the option, the bound and the value given.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard, TypeVar

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_finite_losses",
    "check_int",
    "check_positive",
    "did_you_mean",
    "is_int",
    "is_number",
    "is_real",
    "registered",
]

V = TypeVar("V")


def is_int(value: Any) -> TypeGuard[int]:
    """``value`` is a Python ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """``value`` is a Python ``int`` or ``float`` (NaN and infinities included) and not a
    ``bool``."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_real(value: Any) -> TypeGuard[int | float]:
    """``value`` is a finite Python ``int`` or ``float`` and not a ``bool``."""
    return is_number(value) and math.isfinite(value)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an int; ``ValueError`` naming ``name`` unless it is an int ``>= minimum``."""
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite real option ``> 0`` (``>= 0`` with ``allow_zero``); the error names the option."""
    if not is_real(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate a string option against its allowed values (the error lists them)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def registered(registry: Mapping[str, V], name: str, what: str, tail: str = "") -> V:
    """``registry[name]``; else one ``ValueError`` naming the closest and every valid name:
    ``unknown <what> 'x' (did you mean 'y'?); available <what>s: a, b<tail>``."""
    if name not in registry:
        raise ValueError(
            f"unknown {what} {name!r}{did_you_mean(name, registry)}; available {what}s: "
            f"{', '.join(sorted(registry))}{tail}"
        )
    return registry[name]


def check_finite_losses(
    losses: Tensor,
    names: Sequence[str] | None = None,
    *,
    sign: str | None = None,
    present: Tensor | None = None,
    method: str = "",
) -> None:
    """``ValueError`` naming the first task whose loss in ``losses [T]`` is NaN or infinite or,
    with ``sign``, not ``"positive"`` / ``"non-negative"`` (methods that take the logarithm of
    the losses; only tasks marked in ``present``, a bool ``[T]`` mask, are checked for sign).

    One device-to-host sync (``all()``) when every loss is fine, the usual case.
    """
    L = losses.detach()
    finite = torch.isfinite(L)
    ok = finite
    if sign is not None:
        fits = (L > 0) if sign == "positive" else (L >= 0)
        if present is not None:
            fits = fits | ~present.to(device=L.device, dtype=torch.bool)
        ok = finite & fits
    if bool(ok.all()):
        return
    bad = int((~ok).nonzero()[0, 0])
    label = f"task {names[bad]!r}" if names is not None else f"task {bad}"
    if not bool(finite[bad]):
        raise ValueError(
            f"the loss of {label} is {float(L[bad])}; a NaN or infinite loss cannot be "
            "balanced - check that task's predictions, targets and learning rate"
        )
    hint = " (or pass eps > 0)" if sign == "positive" else ""
    raise ValueError(
        f"method {method!r} takes the logarithm of the losses and needs {sign} losses, but "
        f"the loss of {label} is {float(L[bad])}; use a {sign} loss for that task{hint}"
    )
