"""Importing the callables an experiment file names (``module:attribute``) and calling them
with the file's options, each failure reported as one :class:`ExperimentError` naming the key."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .schema import ExperimentFile, suggestion

__all__ = ["add_python_path", "call_factory", "import_callable"]


def add_python_path(folders: Iterable[Path]) -> None:
    """Put ``folders`` at the front of ``sys.path`` (once each), so their modules import."""
    for folder in reversed(list(folders)):
        text = str(folder)
        if text not in sys.path:
            sys.path.insert(0, text)


def import_callable(file: ExperimentFile, key: str, target: str) -> Callable[..., Any]:
    """The callable ``target`` (``module:attr`` or ``module:Class.attr``) names."""
    module_name, _, attr_path = target.partition(":")
    module = _import_module(file, key, module_name)
    obj: Any = module
    parts = attr_path.split(".")
    for depth, part in enumerate(parts):
        if not hasattr(obj, part):
            owner = f"{module_name}:{'.'.join(parts[:depth])}" if depth else module_name
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise file.error(
                key,
                f"{owner!r} has no attribute {part!r}{suggestion(part, names)} (from {target!r})",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise file.error(key, f"{target!r} is a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


def _import_module(file: ExperimentFile, key: str, module_name: str) -> Any:
    add_python_path(file.python_path)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            where = (
                f"python_path {[str(p) for p in file.python_path]}"
                if file.python_path
                else "sys.path (add its folder with the key python_path)"
            )
            raise file.error(
                key, f"cannot import module {module_name!r}: no module {missing!r} on {where}"
            ) from None
        raise file.error(key, f"importing module {module_name!r} failed: {err}") from err
    except ImportError as err:
        raise file.error(key, f"importing module {module_name!r} failed: {err}") from err


def call_factory(
    file: ExperimentFile,
    key: str,
    target: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    options: Mapping[str, Any],
    options_key: str,
) -> Any:
    """``function(*args, **options)``; options it does not accept, and a ``ValueError`` or
    ``TypeError`` it raises, become an :class:`ExperimentError` naming the key."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **options)
        except TypeError as err:
            params = [
                p.name
                for p in list(signature.parameters.values())[len(args) :]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            given = ", ".join(options) or "none"
            raise file.error(
                options_key,
                f"{target} does not accept these options ({err}); given: {given}; its "
                f"options: {', '.join(params) or 'none'}",
            ) from None
    try:
        return function(*args, **options)
    except (TypeError, ValueError) as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise file.error(key, f"{target}({shown}) failed: {err}") from err
