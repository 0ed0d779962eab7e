"""Shared test helper: ``tb.create`` typed by the kind of method a test needs.

``tb.create`` returns a :class:`~taskbalance.Method`; ``aggregate`` / ``weights`` exist only on
gradient methods and ``combine`` only on loss methods, so tests that call them create the method
through these (a wrong kind fails here, naming the method).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

import taskbalance as tb


def gradient_method(name: str, num_tasks: int, **options: Any) -> tb.GradientMethod:
    """``tb.create(name, num_tasks, **options)``, checked to be a gradient method."""
    method = tb.create(name, num_tasks, **options)
    assert isinstance(method, tb.GradientMethod), f"{name} is not a gradient method"
    return method


def loss_method(name: str, num_tasks: int, **options: Any) -> tb.LossMethod:
    """``tb.create(name, num_tasks, **options)``, checked to be a loss method."""
    method = tb.create(name, num_tasks, **options)
    assert isinstance(method, tb.LossMethod), f"{name} is not a loss method"
    return method


def tensor_attr(module: nn.Module, name: str) -> Tensor:
    """A tensor a module holds (a parameter or buffer such as ``targets`` or ``log_scales``),
    which ``nn.Module.__getattr__`` types as ``Tensor | Module``."""
    value = getattr(module, name)
    assert isinstance(value, Tensor), f"{type(module).__name__}.{name} is not a tensor"
    return value
