"""The one place that knows every balancing method (CLI, configs and docs list from here)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .base import Method

__all__ = ["MethodInfo", "available_methods", "create", "method_info", "register"]

M = TypeVar("M", bound=type[Method])


@dataclass(frozen=True)
class MethodInfo:
    name: str
    kind: str
    paper: str
    summary: str
    options: tuple[str, ...]
    cls: type[Method]


_REGISTRY: dict[str, MethodInfo] = {}


def _options_of(cls: type[Method]) -> tuple[str, ...]:
    params = inspect.signature(cls.__init__).parameters
    return tuple(p for p in params if p not in ("self", "num_tasks"))


def register(name: str, paper: str = "") -> Callable[[M], M]:
    """Class decorator: make a method available as ``taskbalance.create(name, ...)``."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"a balancing method named {name!r} is already registered")
        cls.name = name
        cls.paper = paper
        doc = (cls.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = MethodInfo(
            name=name,
            kind=cls.kind,
            paper=paper,
            summary=doc[0] if doc else "",
            options=_options_of(cls),
            cls=cls,
        )
        return cls

    return decorate


def _ensure_loaded() -> None:
    # Importing the packages registers their methods.
    from . import aggregation, weighting  # noqa: F401


def available_methods(kind: str | None = None) -> list[str]:
    """Names of every registered method, optionally only of one kind (``"loss"``/``"gradient"``)."""
    _ensure_loaded()
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def method_info(name: str) -> MethodInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown balancing method {name!r}; available: {', '.join(available_methods())}"
        ) from None


def create(name: str, num_tasks: int, **options: Any) -> Method:
    """Create a balancing method by name, e.g. ``create("pcgrad", num_tasks=3, seed=0)``.

    Raises ``ValueError`` naming the valid choices for an unknown method or option.
    """
    info = method_info(name)
    removed: dict[str, str] = getattr(info.cls, "removed_options", {})
    for option in sorted(set(options) & set(removed)):
        raise ValueError(f"option {option!r} of method {name!r} was removed: {removed[option]}")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        valid = ", ".join(info.options) if info.options else "none"
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {name!r}; "
            f"valid options: {valid}"
        )
    return info.cls(num_tasks, **options)
