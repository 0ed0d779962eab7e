"""What the model predicts and how it is scored: its predictions checked against the tasks, and
every task's metric accumulators updated over a loader's batches (the
:class:`~taskbalance.training.Trainer`'s validation and test passes; under torchrun the
:class:`~taskbalance.training.distributed_trainer.DistributedTrainer` reduces the accumulators).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor, nn

from .loaders import loader_len, mask_for, to_device, unpack_batch
from .progress import bar

__all__ = ["accumulate_metrics", "checked_predictions"]


def checked_predictions(preds: Any, tasks: Iterable[str]) -> Mapping[str, Tensor]:
    """``preds`` (the model's output) when it is a dict holding a prediction of every task."""
    if not isinstance(preds, Mapping):
        raise ValueError(
            f"the model must return a dict task name -> prediction, got {type(preds).__name__}"
        )
    missing = [t for t in tasks if t not in preds]
    if missing:
        raise ValueError(f"the model returned no prediction for task(s) {missing}")
    return preds


def accumulate_metrics(
    model: nn.Module,
    tasks: Mapping[str, Any],
    loader: Iterable,
    *,
    predict: Callable[[Any], Mapping[str, Tensor]],
    autocast: Callable[[], AbstractContextManager[Any]],
    device: Any,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    """Every task's metric accumulators (``task.new_metrics()``), updated with every batch of
    ``loader`` (``predict(inputs)`` under ``autocast()``, the model in eval mode meanwhile;
    floating-point predictions scored in float32, a task without a label in a batch skipped)."""
    was_training = model.training
    model.eval()
    metrics = {name: task.new_metrics() for name, task in tasks.items()}
    try:
        for batch in bar(loader, progress, desc, loader_len(loader), False):
            inputs, targets, masks = unpack_batch(batch)
            with autocast():
                preds = predict(to_device(inputs, device))
            for name, acc in metrics.items():
                has, mask = mask_for(masks, name, device)
                if has:
                    p = preds[name]
                    pred = p.float() if p.is_floating_point() else p
                    acc.update(pred, to_device(targets[name], device), mask)
    finally:
        model.train(was_training)
    return metrics
