"""The optimizer and learning-rate scheduler of a run, from names or user objects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "build_optimizer", "build_scheduler"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def build_optimizer(
    optimizer: Any,
    params: Iterable[nn.Parameter],
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    options: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9 unless ``options`` say
    otherwise), a callable ``params -> Optimizer``, or an optimizer object (returned as is; it
    must then hold every parameter to train)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = list(params)
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(params)  # type: ignore[no-any-return]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    kwargs = {"lr": lr, "weight_decay": weight_decay, **dict(options or {})}
    if optimizer == "sgd":
        kwargs.setdefault("momentum", 0.9)
    try:
        return OPTIMIZERS[optimizer](params, **kwargs)
    except TypeError as err:
        given = dict(options or {})
        raise ValueError(f"bad optimizer_options {given} for {optimizer!r}: {err}") from err


def build_scheduler(
    scheduler: Any,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A scheduler stepped once per epoch: ``"none"``/``None`` (returns ``None``), ``"cosine"``
    (``CosineAnnealingLR`` over ``epochs``), ``"step"`` (×0.1 every ``max(1, epochs // 3)``
    epochs), a callable ``optimizer -> scheduler`` or a scheduler object (returned as is)."""
    if scheduler is None or scheduler == "none":
        if options:
            raise ValueError("scheduler_options given but scheduler is 'none'")
        return None
    if isinstance(scheduler, str):
        sched = torch.optim.lr_scheduler
        cls: Any
        kwargs: dict[str, Any]
        if scheduler == "cosine":
            cls, kwargs = sched.CosineAnnealingLR, {"T_max": epochs}
        elif scheduler == "step":
            cls, kwargs = sched.StepLR, {"step_size": max(1, epochs // 3), "gamma": 0.1}
        else:
            raise ValueError(f"scheduler must be 'none', 'cosine' or 'step', got {scheduler!r}")
        kwargs.update(dict(options or {}))
        try:
            return cls(optimizer, **kwargs)
        except TypeError as err:
            raise ValueError(f"bad scheduler_options {dict(options or {})}: {err}") from err
    if callable(scheduler) and not hasattr(scheduler, "step"):
        return scheduler(optimizer)
    return scheduler
