"""What a model may add to its own training; the :class:`~taskbalance.training.Trainer` honours
both hooks for any model, in param and rep mode, with every balancing method:

* ``model.regularization() -> Tensor | None``: a scalar penalty of the current step, e.g.
  DSelect-K's entropy regulariser (Hazimeh et al. 2021). The Trainer calls it after the step's
  forward pass (so it may read what that pass left behind, such as gate outputs) and adds its
  gradient once, unweighted, to the balanced update. It is not a task: no method weights,
  projects or sees it, and it does not enter the logged task losses. ``None`` (or a model
  without the method) adds nothing. With a double-sampling method (several forward passes a
  step) it is read once, after the last.
* ``model.set_epoch(epoch)``: called before every training epoch with that epoch's 0-based
  index (the first epoch after a resume included), for schedules that are a function of the
  epoch, e.g. LTB's Gumbel-softmax temperature (Guo et al. 2020). A schedule written this way
  resumes exactly: the resumed run calls it with the same indices.

The regulariser's backward runs before the Balancer's and keeps the graph (the Balancer then
backpropagates the task losses through it); the Balancer adds to gradients already present, so
``.grad`` ends as ``∇R`` plus the balanced direction. Under float16 loss scaling its gradient
is scaled like the task losses' and unscaled with them.

The Lightning integration (:class:`taskbalance.lightning.BalancedModule`) honours both hooks of
the ``LightningModule`` the same way; under several processes a penalty is refused (its
gradient would not be reduced over the ranks).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = [
    "backward_regularization",
    "distributed_penalty_error",
    "model_regularization",
    "set_epoch",
]


def model_regularization(model: Any) -> Tensor | None:
    """``model.regularization()`` checked: ``None`` or a finite-typed floating-point scalar."""
    hook = getattr(model, "regularization", None)
    if hook is None:
        return None
    if not callable(hook):
        raise TypeError(
            f"{type(model).__name__}.regularization must be a method returning a scalar "
            "tensor or None"
        )
    value = hook()
    if value is None:
        return None
    if not isinstance(value, Tensor) or value.dim() != 0 or not value.is_floating_point():
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{type(model).__name__}.regularization() must return a floating-point scalar "
            f"tensor or None, got {shape}"
        )
    return value


def backward_regularization(model: Any, scale: Tensor | None = None) -> Tensor | None:
    """Add ``∇ model.regularization()`` (times the float16 loss ``scale`` if any) to ``.grad``,
    keeping the graph for the task losses' backward; returns the detached value (or ``None``)."""
    value = model_regularization(model)
    if value is None:
        return None
    if value.requires_grad:
        seed = value.float() if scale is None else value.float() * scale
        seed.backward(retain_graph=True)
    return value.detach()


def distributed_penalty_error(model: Any) -> ValueError:
    """The error for a penalty under several processes: its gradient would stay local."""
    return ValueError(
        f"{type(model).__name__}.regularization() returned a penalty: its gradient would stay "
        "local to each rank (not reduced), so the ranks' parameters would drift apart; turn the "
        "penalty off (e.g. DSelectK entropy_weight=0) or train in one process"
    )


def set_epoch(model: Any, epoch: int) -> None:
    """Call ``model.set_epoch(epoch)`` when the model has it."""
    hook = getattr(model, "set_epoch", None)
    if callable(hook):
        hook(epoch)
