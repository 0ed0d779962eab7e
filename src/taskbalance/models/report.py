"""What sharing saves: parameters and inference time of a multi-task network against the stack of
single-task networks it replaces."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from taskbalance.validation import is_int

__all__ = ["count_parameters", "single_task_models", "sharing_report", "time_forward"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (shared tensors counted once).

    ``trainable_only=True`` counts only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def single_task_models(
    factory: Callable[[str], nn.Module], tasks: Iterable[str]
) -> dict[str, nn.Module]:
    """``{task: factory(task)}``: the stack of single-task baselines built by ``factory``.

    For taskbalance's multi-task networks, ``model.single_task_copies()`` gives the matching
    stack directly (same backbone and heads, no sharing).
    """
    out: dict[str, nn.Module] = {}
    for task in tasks:
        model = factory(task)
        if not isinstance(model, nn.Module):
            raise TypeError(f"factory({task!r}) returned {type(model)!r}, not an nn.Module")
        out[task] = model
    return out


def _sync(x: Any) -> None:
    if isinstance(x, Tensor) and x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def time_forward(model: nn.Module, example_input: Any, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``model(example_input)`` in eval mode without autograd.

    The model's train/eval state is restored afterwards; CUDA is synchronised around each call.
    """
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if not is_int(warmup) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(example_input)
            _sync(example_input)
            for _ in range(repeats):
                start = time.perf_counter()
                model(example_input)
                _sync(example_input)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


def sharing_report(
    multitask_model: nn.Module,
    single_task_models: Mapping[str, nn.Module],
    example_input: Any,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Parameters and inference time of ``multitask_model`` against the single-task stack.

    Inference time is the median over ``repeats`` forward passes (eval mode, no grad) on
    ``example_input``; the single-task stack's time is the sum of its models' medians (they run
    one after another). If ``multitask_model`` has ``task_names``, ``single_task_models`` must
    have exactly those keys.

    Returns a dict with:
        ``tasks``; ``multitask_parameters``; ``single_task_parameters`` (sum over the stack);
        ``per_task_parameters`` (task -> count); ``parameters_saved`` (difference);
        ``parameters_saved_fraction`` (``1 - multitask / single``); ``multitask_time_s``;
        ``single_task_time_s`` (sum); ``per_task_time_s``; ``time_saved_fraction``
        (``1 - multitask / single``); ``speedup`` (``single / multitask``); ``repeats``.
    """
    if not single_task_models:
        raise ValueError("single_task_models is empty: give one single-task model per task")
    tasks = list(single_task_models)
    names = getattr(multitask_model, "task_names", None)
    if names is not None and set(names) != set(tasks):
        missing = sorted(set(names) - set(tasks))
        extra = sorted(set(tasks) - set(names))
        raise ValueError(
            f"single_task_models do not match the multi-task model's tasks: missing {missing}, "
            f"extra {extra}"
        )
    if names is not None:
        tasks = list(names)
    per_task_params = {t: count_parameters(single_task_models[t]) for t in tasks}
    mtl_params = count_parameters(multitask_model)
    single_params = sum(per_task_params.values())
    mtl_time = time_forward(multitask_model, example_input, repeats, warmup)
    per_task_time = {
        t: time_forward(single_task_models[t], example_input, repeats, warmup) for t in tasks
    }
    single_time = sum(per_task_time.values())
    return {
        "tasks": tasks,
        "multitask_parameters": mtl_params,
        "single_task_parameters": single_params,
        "per_task_parameters": per_task_params,
        "parameters_saved": single_params - mtl_params,
        "parameters_saved_fraction": 1.0 - mtl_params / single_params if single_params else 0.0,
        "multitask_time_s": mtl_time,
        "single_task_time_s": single_time,
        "per_task_time_s": per_task_time,
        "time_saved_fraction": 1.0 - mtl_time / single_time if single_time > 0 else 0.0,
        "speedup": single_time / mtl_time if mtl_time > 0 else float("inf"),
        "repeats": repeats,
    }
