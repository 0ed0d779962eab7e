"""Lightning integration: train a ``LightningModule`` with any balancing method.

:class:`BalancedModule` is a mixin (``class Net(BalancedModule, L.LightningModule)``) that turns
on manual optimisation and takes each training step with a :class:`~taskbalance.Balancer`:
the module's :meth:`~BalancedModule.task_losses` gives the task losses, ``Balancer.backward``
writes the gradients, the optimizers and learning-rate schedulers step, per-epoch methods (DWA)
get their epoch means, and the step's weights, gradient norms and cosines are logged. The model
hooks the :class:`~taskbalance.training.Trainer` honours are honoured on the module itself:
``self.regularization()``'s gradient is added, unbalanced, to each step, and
``self.set_epoch(epoch)`` is called before each training epoch
(:mod:`taskbalance.training.model_hooks`).

Under a Lightning strategy that wraps ``DistributedDataParallel`` (``"ddp"``, ``"ddp_spawn"``,
``"ddp_find_unused_parameters_true"``, ...) the Balancer reduces over DDP's process group and the
backward runs inside ``no_sync()``: every rank takes the step of the union of all ranks' batches
(exact, see ``docs/distributed.md``) and DDP's own all-reduce is not applied on top. It works
with ``lightning`` (``lightning.pytorch``) and ``pytorch_lightning``; neither is imported here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from taskbalance.balancing import Balancer, Method, StepInfo
from taskbalance.balancing.independent_step import single_sampling_error
from taskbalance.balancing.step_info import LossInput
from taskbalance.training.model_hooks import (
    backward_regularization,
    distributed_penalty_error,
    model_regularization,
    set_epoch,
)

if (
    importlib.util.find_spec("lightning") is None
    and importlib.util.find_spec("pytorch_lightning") is None
):
    raise ModuleNotFoundError(
        'taskbalance.lightning needs Lightning: pip install "taskbalance[lightning]" '
        "(or pip install lightning)"
    )

__all__ = ["BalancedModule", "TaskLosses"]

#: Above this many tasks the pairwise cosines are logged as their mean only.
MAX_LOGGED_PAIRS_TASKS = 10


@dataclass
class TaskLosses:
    """What :meth:`BalancedModule.task_losses` may return instead of a plain loss dict:
    ``features`` are the shared features the heads consumed (rep mode, GradNorm's head pass),
    ``counts`` the labelled samples per task in this rank's batch (distributed runs with
    unequal local batches or missing labels; see ``docs/distributed.md``)."""

    losses: LossInput
    features: Tensor | Sequence[Tensor] | None = None
    counts: Mapping[str, float] | Sequence[float] | Tensor | None = None


def _is_lightning_module(obj: object) -> bool:
    return any(
        cls.__name__ == "LightningModule"
        and cls.__module__.partition(".")[0] in ("lightning", "pytorch_lightning")
        for cls in type(obj).__mro__
    )


def _names_of(module: nn.Module, params: Iterable[nn.Parameter], what: str) -> list[str]:
    """The names of ``params`` in ``module`` (kept instead of the objects: a strategy may
    replace parameters when it moves or wraps the module)."""
    names = {id(p): n for n, p in module.named_parameters()}
    out, unknown = [], 0
    for p in params:
        if id(p) in names:
            out.append(names[id(p)])
        else:
            unknown += 1
    if unknown:
        raise ValueError(
            f"{unknown} of {what} are not parameters of this module; pass parameters of its "
            "submodules, and call set_balancing after assigning them"
        )
    if not out:
        raise ValueError(f"{what} is empty")
    return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


class BalancedModule(nn.Module):
    """Mixin for a ``LightningModule`` trained with a taskbalance method (manual optimisation).

    Put it first among the bases, call :meth:`set_balancing` in ``__init__`` after the
    submodules exist, implement :meth:`task_losses` and ``configure_optimizers`` (an optimizer
    over ``self.parameters()`` also holds the method's learnable parameters: ``uw``,
    ``imtl_l``, ``gradnorm``, ``famo``). If you override ``on_fit_start``,
    ``on_train_epoch_start`` or ``on_train_epoch_end``, call ``super()``'s. ``self.balancer`` is
    the step's :class:`~taskbalance.Balancer` (built at the first training step of each fit).

    The Trainer's model hooks, defined on this module (forward them to a wrapped network, e.g.
    ``def set_epoch(self, epoch): self.net.set_epoch(epoch)``): ``regularization()`` is read
    after :meth:`task_losses` and its gradient added once, unweighted, before the balanced
    update (refused under several processes: it would not be reduced); ``set_epoch(epoch)`` is
    called with Lightning's 0-based ``current_epoch`` before each training epoch.

    Schedulers from ``configure_optimizers`` step as under automatic optimisation: by their
    ``interval`` (``"step"`` or ``"epoch"``) and ``frequency``; a ``ReduceLROnPlateau`` at the
    end of each training epoch with the logged value of its ``monitor``. To clip gradients,
    call ``self.clip_gradients(optimizer, ...)`` in ``on_before_optimizer_step`` (Lightning
    refuses ``Trainer(gradient_clip_val=...)`` under manual optimisation).
    """

    if TYPE_CHECKING:  # provided by LightningModule
        trainer: Any
        automatic_optimization: bool

        def optimizers(self, use_pl_optimizer: bool = True) -> Any: ...
        def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None: ...

    def set_balancing(
        self,
        method: Method,
        shared_parameters: Iterable[nn.Parameter],
        mode: str = "param",
        *,
        log: bool = True,
        **balancer_options: Any,
    ) -> None:
        """Train with ``method`` (from :func:`taskbalance.create`); ``shared_parameters``,
        ``mode`` and ``balancer_options`` (e.g. ``memory``, ``track_gradients``,
        ``last_shared_parameters``) are those of :class:`~taskbalance.Balancer`. ``log``:
        ``self.log`` the step's losses, weights, gradient norms and cosines as
        ``balance/<what>/<task>_step`` and their epoch means as ``..._epoch`` (see
        ``docs/distributed.md``, "Lightning")."""
        if not _is_lightning_module(self):
            raise TypeError(
                "BalancedModule is a mixin for a LightningModule: declare "
                "class MyModel(BalancedModule, lightning.LightningModule)"
            )
        if not isinstance(method, Method):
            raise TypeError(
                f"method must be a balancing method from taskbalance.create(...), got "
                f"{type(method).__name__}"
            )
        if getattr(method, "independent_batches", 1) > 1:
            raise single_sampling_error(
                method.name, "is not supported by BalancedModule (a training_step is not split)"
            )
        taken = sorted({"process_group", "parameters"} & set(balancer_options))
        if taken:
            raise ValueError(
                f"{taken} are set from the Lightning strategy (DDP's process group and this "
                "module's parameters); leave them out"
            )
        last = balancer_options.pop("last_shared_parameters", None)
        self._tb_shared = _names_of(self, shared_parameters, "shared_parameters")
        self._tb_last = None if last is None else _names_of(self, last, "last_shared_parameters")
        self._tb_mode = mode
        self._tb_options = balancer_options
        self._tb_log = log
        self.automatic_optimization = False
        # a submodule: its state is in state_dict (checkpoints), it moves with the module and
        # self.parameters() holds its learnable parameters
        self.balancing_method = method
        self.balancer: Balancer | None = None
        self._tb_epoch: list[Tensor] | None = None
        self._tb_steps = 0  # optimisation steps taken (step-interval scheduler frequency)
        # a bad mode or option fails here, in __init__, not at the first training step
        Balancer(method, self._params(self._tb_shared), mode, process_group=None, **self._kw())

    # ------------------------------------------------------------------ user hooks
    def task_losses(self, batch: Any, batch_idx: int) -> LossInput | TaskLosses:
        """The task losses of a batch: a dict task -> scalar loss (``None`` for a task without
        a label in the batch), or :class:`TaskLosses` with features and counts."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement task_losses(batch, batch_idx), returning a "
            "dict task name -> loss (or TaskLosses(losses, features=..., counts=...))"
        )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        out = self.task_losses(batch, batch_idx)
        if isinstance(out, TaskLosses):
            self.balanced_step(out.losses, out.features, counts=out.counts)
        else:
            self.balanced_step(out)

    # ------------------------------------------------------------------ the step
    def balanced_step(
        self,
        losses: LossInput,
        features: Tensor | Sequence[Tensor] | None = None,
        *,
        counts: Mapping[str, float] | Sequence[float] | Tensor | None = None,
    ) -> StepInfo:
        """One optimisation step from the task losses (for a ``training_step`` of your own):
        zero the gradients, ``Balancer.backward``, step every optimizer (not when the Balancer
        skipped the step) and the step-interval schedulers, log."""
        balancer = self._balancer()
        optimizers = _as_list(self.optimizers())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with self._no_sync():
            self._backward_regularization()  # unweighted, unbalanced (the Trainer's hook)
            info = balancer.backward(losses, features, counts=counts)
        if info.skipped:  # nonfinite="skip": heads may hold this step's gradients
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        else:
            for opt in optimizers:
                opt.step()
            self._tb_steps += 1
            self._step_schedulers("step")
        self._add_to_epoch(info)
        if self._tb_log:
            self._log_step(info)
        return info

    def on_fit_start(self) -> None:
        self.balancer = None  # a new fit may run under another strategy or process group
        self._tb_epoch = None

    def on_train_epoch_start(self) -> None:
        """``self.set_epoch(current_epoch)`` when the module has it (e.g. LTB's annealing)."""
        set_epoch(self, self.trainer.current_epoch)

    def on_train_epoch_end(self) -> None:
        """Per-epoch methods (DWA, STCH) receive the epoch's mean task losses (union losses
        under DDP: the same on every rank); epoch-interval schedulers step."""
        if self._tb_epoch is not None:
            total, count = self._tb_epoch
            mean = torch.where(count > 0, total / count.clamp_min(1), math.nan)
            self.balancing_method.epoch_end(mean.to(torch.float32))
            self._tb_epoch = None
        self._step_schedulers("epoch")

    # ------------------------------------------------------------------ helpers
    def _backward_regularization(self) -> None:
        """Add ``∇ self.regularization()`` to ``.grad`` (one process only, as the Trainer)."""
        if self.trainer.world_size > 1:
            if model_regularization(self) is not None:
                raise distributed_penalty_error(self)
            return
        backward_regularization(self)

    def _kw(self) -> dict[str, Any]:
        last = None if self._tb_last is None else self._params(self._tb_last)
        return {"last_shared_parameters": last, **self._tb_options}

    def _params(self, names: list[str]) -> list[nn.Parameter]:
        found = dict(self.named_parameters())
        return [found[n] for n in names]

    def _ddp(self) -> DistributedDataParallel | None:
        model = self.trainer.strategy.model
        return model if isinstance(model, DistributedDataParallel) else None

    def _no_sync(self) -> contextlib.AbstractContextManager[Any]:
        ddp = self._ddp()
        return contextlib.nullcontext() if ddp is None else ddp.no_sync()

    def _balancer(self) -> Balancer:
        if getattr(self, "_tb_shared", None) is None:
            raise RuntimeError(
                f"{type(self).__name__} never called self.set_balancing(method, "
                "shared_parameters) (call it in __init__)"
            )
        if self.balancer is None:
            self.balancer = self._build_balancer()
        return self.balancer

    def _build_balancer(self) -> Balancer:
        trainer = self.trainer
        ddp = self._ddp()
        if ddp is None and trainer.world_size > 1:
            raise ValueError(
                f"taskbalance.lightning needs a strategy that wraps DistributedDataParallel "
                f"(e.g. strategy='ddp') to run on {trainer.world_size} processes; "
                f"{type(trainer.strategy).__name__} does not"
            )
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                "precision='16-mixed' scales the loss for manual_backward, which the Balancer "
                "does not call; use precision='bf16-mixed' or '32-true'"
            )
        self._check_optimizers()
        method_ids = {id(p) for p in self.balancing_method.parameters()}
        kwargs = self._kw()
        if ddp is not None:  # every rank reduces the module's gradients in one order
            kwargs["parameters"] = [p for p in self.parameters() if id(p) not in method_ids]
        return Balancer(
            self.balancing_method,
            self._params(self._tb_shared),
            self._tb_mode,
            process_group=None if ddp is None else ddp.process_group,
            **kwargs,
        )

    def _check_optimizers(self) -> None:
        held = {
            id(p)
            for opt in _as_list(self.optimizers(use_pl_optimizer=False))
            for group in opt.param_groups
            for p in group["params"]
        }
        missing = [
            n
            for n, p in self.balancing_method.named_parameters()
            if p.requires_grad and id(p) not in held
        ]
        if missing:
            raise ValueError(
                f"no optimizer holds the parameters {missing} that method "
                f"{self.balancing_method.name!r} learns; build the optimizer in "
                "configure_optimizers over self.parameters() (they include "
                "self.balancing_method), or add self.balancing_method.parameters() as a group"
            )
        for config in self.trainer.lr_scheduler_configs:
            if config.interval not in ("step", "epoch"):
                raise ValueError(
                    f"scheduler interval must be 'step' or 'epoch', got {config.interval!r}"
                )

    def _step_schedulers(self, interval: str) -> None:
        trainer = self.trainer
        count = self._tb_steps if interval == "step" else trainer.current_epoch + 1
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency != 0:
                continue
            if not config.reduce_on_plateau:
                config.scheduler.step()
                continue
            value = trainer.callback_metrics.get(config.monitor)
            if value is None:
                raise ValueError(
                    f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged by "
                    f"the end of the training epoch; logged: {sorted(trainer.callback_metrics)}"
                )
            config.scheduler.step(value)

    def _add_to_epoch(self, info: StepInfo) -> None:
        present = info.present.to(torch.float64)
        losses = info.losses.detach().to(torch.float64) * present
        if self._tb_epoch is None:
            self._tb_epoch = [torch.zeros_like(losses), torch.zeros_like(present)]
        self._tb_epoch[0] += losses
        self._tb_epoch[1] += present

    def _log_step(self, info: StepInfo) -> None:
        # Under DDP the values are the union batch's, identical on every rank: the step values
        # need no reduction; the epoch means are reduced once per epoch (sync_dist), which
        # changes nothing but is what Lightning asks of epoch-level values in a distributed run.
        sync = self._ddp() is not None
        for name, value in _step_values(info):
            key = f"balance/{name}"
            self.log(f"{key}_step", value, on_step=True, on_epoch=False, batch_size=1)
            self.log(
                f"{key}_epoch", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=sync
            )


def _step_values(info: StepInfo) -> Iterator[tuple[str, Tensor]]:
    """What a step logs: per present task its loss, weight and gradient norm; per pair of
    present tasks their cosine (their mean alone above ``MAX_LOGGED_PAIRS_TASKS`` tasks)."""
    present = [i for i, p in enumerate(info.present.tolist()) if p]
    names = info.task_names
    for key, values in (
        ("loss", info.losses),
        ("weight", info.weights),
        ("grad_norm", info.grad_norms),
    ):
        if values is not None:
            for i in present:
                yield f"{key}/{names[i]}", values[i]
    if info.cosines is None or len(present) < 2:
        return
    pairs = [(i, j) for a, i in enumerate(present) for j in present[a + 1 :]]
    if len(names) > MAX_LOGGED_PAIRS_TASKS:
        yield "cos/mean", torch.stack([info.cosines[i, j] for i, j in pairs]).mean()
        return
    for i, j in pairs:
        yield f"cos/{names[i]}~{names[j]}", info.cosines[i, j]
