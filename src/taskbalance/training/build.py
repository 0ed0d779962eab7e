"""How the :class:`~taskbalance.training.Trainer`'s parts are chosen from its arguments: the
tasks, the balancing method, param or rep mode, and the shared parameters (each check with a
message that names the fix)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from taskbalance.balancing import create
from taskbalance.balancing.base import Method
from taskbalance.validation import is_int

__all__ = [
    "check_counts",
    "choose_mode",
    "passes_features",
    "rep_features",
    "resolve_method",
    "resolve_tasks",
    "shared_of",
]


def check_counts(epochs: Any, steps: Any, bn_recalibration: Any, final_epochs: Any = None) -> None:
    """``epochs >= 1``, ``steps`` and ``final_epochs`` ``None`` or ``>= 1``,
    ``bn_recalibration >= 0`` (integers)."""
    if final_epochs is not None and (not is_int(final_epochs) or final_epochs < 1):
        raise ValueError(f"final_epochs must be None or an integer >= 1, got {final_epochs!r}")
    if not is_int(epochs) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if steps is not None and (not is_int(steps) or steps < 1):
        raise ValueError(f"steps must be None or an integer >= 1, got {steps!r}")
    if not is_int(bn_recalibration) or bn_recalibration < 0:
        raise ValueError(f"bn_recalibration must be an integer >= 0, got {bn_recalibration!r}")


def resolve_tasks(
    tasks: Sequence[Any] | Mapping[str, Any], trainable_tasks: Sequence[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """``({name: task}, trainable names)``; names unique, trainable ones among the tasks."""
    task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    if not task_list:
        raise ValueError("tasks is empty; give the Task objects to train and evaluate")
    by_name = {t.name: t for t in task_list}
    if len(by_name) != len(task_list):
        raise ValueError(f"task names must be unique, got {[t.name for t in task_list]}")
    names = list(by_name)
    trainable = list(names if trainable_tasks is None else trainable_tasks)
    unknown = [t for t in trainable if t not in by_name]
    if unknown or not trainable or len(set(trainable)) != len(trainable):
        raise ValueError(
            f"trainable_tasks must be distinct names among the tasks {names}; got {trainable}"
        )
    return by_name, trainable


def resolve_method(
    method: Method | str, trainable: Sequence[str], options: Mapping[str, Any] | None
) -> Method:
    """A method object for the ``trainable`` tasks (created when given by name)."""
    num_tasks = len(trainable)
    if isinstance(method, str):
        method = create(method, num_tasks, **dict(options or {}))
    elif options:
        raise ValueError("method_options only apply when method is given by name")
    if not isinstance(method, Method):
        raise TypeError(f"method must come from taskbalance.create(...), got {type(method)!r}")
    if method.num_tasks != num_tasks:
        raise ValueError(
            f"the method was created for {method.num_tasks} task(s) but {num_tasks} "
            f"task(s) are trained ({list(trainable)}); create it with num_tasks={num_tasks}"
        )
    return method


def passes_features(method: Method, mode: str, model: nn.Module) -> bool:
    """Whether a step hands the Balancer the shared features: rep mode for a gradient method,
    and GradNorm (``needs_last_layer_grad_norms``) when the model has one shared representation
    below which every shared parameter lies (``supports_rep_mode``, not ``rep_detach``) and
    hands each head its own view of it (``head_inputs``, see :func:`rep_features`): its T norms
    then take one head pass and one batched backward from the features instead of T passes
    through the heads and the top of the trunk (same numbers to float rounding)."""
    if method.kind == "gradient":
        return mode == "rep"
    return (
        bool(getattr(method, "needs_last_layer_grad_norms", False))
        and bool(getattr(model, "supports_rep_mode", True))
        and not getattr(model, "rep_detach", False)
    )


def rep_features(model: nn.Module, losses: Mapping[str, Any], balancer: Any) -> Any:
    """What a step hands the Balancer: None unless :func:`passes_features`; then the heads' own
    views of the features when the model has them (``head_inputs``: one backward gives every
    task's row; one process only), else the shared features (gradient methods; GradNorm gets
    only views, which its heads provably read, else None: the norms from the losses)."""
    if not passes_features(balancer.method, balancer.mode, model):
        return None
    inputs = getattr(model, "head_inputs", None)
    if inputs is None or balancer.distributed:
        gradient = balancer.method.kind == "gradient"
        return getattr(model, "features", None) if gradient else None
    return {task: inputs[task] for task in losses}


def choose_mode(mode: str | None, method: Method, model: nn.Module | None) -> str:
    """``"param"`` or ``"rep"``; ``None``/``"auto"``: rep when the method prefers it and the
    model has one shared representation. ``model=None``: the mode planned before the model is
    built (taken to have one shared representation; a model without one only turns a
    preferred rep into param)."""
    supports_rep = model is None or getattr(model, "supports_rep_mode", True)
    if mode is None or mode == "auto":
        mode = "rep" if (method.prefers_rep_mode and supports_rep) else "param"
        if method.prefers_rep_mode and not supports_rep:
            warnings.warn(
                f"method {method.name!r} prefers rep mode but {type(model).__name__} has no "
                "shared representation; using param mode",
                RuntimeWarning,
                stacklevel=3,
            )
    elif mode not in ("param", "rep"):
        raise ValueError(f"mode must be 'param', 'rep' or None (auto), got {mode!r}")
    gradient = method.kind == "gradient"
    if mode == "rep" and not supports_rep and gradient:
        raise ValueError(
            f"mode='rep' needs a model with one shared representation; {type(model).__name__} "
            "has none (use mode='param')"
        )
    if getattr(model, "rep_detach", False) and gradient and mode != "rep":
        raise ValueError(
            "a model built with rep_detach=True stops task gradients at the shared features, "
            "so param mode cannot see per-task gradients of the backbone; use mode='rep' or "
            "build the model with rep_detach=False"
        )
    return mode


def shared_of(model: nn.Module, given: Iterable[nn.Parameter] | None) -> list[nn.Parameter]:
    """The shared parameters: ``given``; else every parameter of ``model.shared_modules()``,
    frozen ones included (the Balancer balances over those that require grad at each step);
    else ``model.shared_parameters()``."""
    if given is not None:
        return list(given)
    modules = getattr(model, "shared_modules", None)
    if callable(modules):
        seen: dict[int, nn.Parameter] = {}
        for module in modules():
            for p in module.parameters():
                seen.setdefault(id(p), p)
        if seen:
            return list(seen.values())
    getter = getattr(model, "shared_parameters", None)
    if not callable(getter):
        raise ValueError(
            f"{type(model).__name__} has no shared_parameters(); pass "
            "shared_parameters=... or use a taskbalance.models.MultiTaskModel"
        )
    return list(getter())
