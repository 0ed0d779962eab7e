"""The training loop: :class:`Trainer` (any model and data) and :func:`train` (a config).

One epoch of :meth:`Trainer.fit`:

1. training steps: forward, masked task losses (``None`` for a task without labels in the batch),
   ``Balancer.backward``, optimizer step. ``StepInfo`` statistics are summed on the device and
   read back once per epoch (the only per-step synchronisation is the Balancer's finiteness check);
2. ``method.epoch_end(mean_losses)`` (methods that update per epoch, e.g. DWA; ``NaN`` for a task
   that had no label in the whole epoch), scheduler step;
3. evaluation of every task's metrics on validation and test;
4. model selection on **validation only** (see :func:`selection_score`);
5. history record, atomic checkpoint (and ``best.pt`` when the epoch is the new best), history
   files, callbacks.

Resuming restores model, optimizer, scheduler, grad scaler, method state, every RNG (torch, CUDA,
numpy, ``random``, the DataLoader's shuffling generator), history and best-epoch state, so a resumed
CPU run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from taskbalance.balancing import Balancer, StepInfo, create
from taskbalance.balancing.base import LossMethod, Method

from .checkpoint import (
    CHECKPOINT_NAME,
    atomic_replace,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from .config import RESUME_MAY_DIFFER, TrainConfig
from .logging import HistoryWriter
from .rundir import check_new_run, clear_run

__all__ = [
    "Callback",
    "RunResult",
    "Trainer",
    "comparable_metrics",
    "make_loaders",
    "resolve_device",
    "seed_everything",
    "selection_score",
    "train",
]

#: ``callback(trainer, record)`` after every epoch (after the checkpoint is written). Raising
#: stops training; the run can be resumed from the checkpoint.
Callback = Callable[["Trainer", dict[str, Any]], None]

BEST_NAME = "best.pt"


def _staged_best(epoch: int | str) -> str:
    return f".best-epoch{epoch}.pt"


SELECTION_RULE = (
    "lowest validation Δm% (taskbalance.tasks.task_delta over every metric of the trained tasks) "
    "against the first epoch's validation metrics; with one trained task, its primary metric. "
    "Metrics are left out by the rule of taskbalance.tasks.DELTA_RULE (first-epoch value 0, not "
    "finite, or a higher-is-better value below 0.05); ties keep the earlier epoch."
)


# ---------------------------------------------------------------------------------- utilities


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seed the legacy global RNG users rely on)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` for ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Raises:
        ValueError: the device is malformed or not available on this machine (the message says
            why and what to use instead).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None}); "
                "use device='cpu', or install a CUDA build of torch on a machine with a GPU"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} was requested but only {count} CUDA device(s) exist "
                f"(cuda:0..cuda:{count - 1})"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device {str(device)!r} was requested but MPS (Apple GPU) is not available on "
                "this machine; use device='cpu'"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return dev


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _unpack(batch: Any) -> tuple[Any, Mapping[str, Tensor], Mapping[str, Tensor] | None]:
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        inputs, targets = batch[0], batch[1]
        masks = batch[2] if len(batch) == 3 else None
        if isinstance(targets, Mapping) and (masks is None or isinstance(masks, Mapping)):
            return inputs, targets, masks
    raise ValueError(
        "each batch must be (inputs, targets, masks) with targets and masks dicts keyed by task "
        f"name (or (inputs, targets)); got {type(batch).__name__}"
    )


def _batch_len(batch: Any) -> int:
    """Number of samples in a batch (for samples/s), read from tensor metadata only."""
    inputs = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if isinstance(inputs, Mapping):
        inputs = next(iter(inputs.values()), None)
    return int(inputs.shape[0]) if isinstance(inputs, Tensor) and inputs.dim() else 0


def _mask_for(
    masks: Mapping[str, Tensor] | None, name: str, device: torch.device
) -> tuple[bool, Tensor | None]:
    """``(any_labelled, mask_or_None)``; decided on the CPU copy of the mask (no device sync)."""
    if masks is None or name not in masks:
        return True, None
    mask = masks[name]
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.device.type == "cpu":
        if mask.dtype != torch.bool:
            mask = mask != 0
        if not bool(mask.any()):
            return False, None
        if bool(mask.all()):
            return True, None
    return True, mask.to(device, non_blocking=True)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``scale`` (float16 loss scaling that leaves the
    loss values seen by the balancing method unchanged)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


def _count_parameters(model: nn.Module, task_names: Sequence[str]) -> int:
    """Parameters the evaluated tasks use: shared part plus their task parts (frozen included)."""
    shared_modules = getattr(model, "shared_modules", None)
    task_modules = getattr(model, "task_modules", None)
    if callable(shared_modules) and callable(task_modules):
        modules = list(shared_modules())
        for name in task_names:
            modules.extend(task_modules(name))
        seen: dict[int, int] = {}
        for module in modules:
            for p in module.parameters():
                seen[id(p)] = p.numel()
        return sum(seen.values())
    return sum(p.numel() for p in model.parameters())


def comparable_metrics(
    metrics: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Any],
) -> tuple[dict[str, float], dict[str, float], dict[str, bool], list[str]]:
    """The metrics of ``tasks`` that enter Δm% against ``baseline``
    (:data:`taskbalance.tasks.DELTA_RULE`, decided from the baseline alone).

    Returns ``(results, base, directions, skipped)``: the first three keyed by ``"task/metric"``
    (the arguments of :func:`taskbalance.tasks.delta_m`); ``skipped`` lists the metrics left out
    because their baseline is missing or the rule excludes them, or their value is not finite.
    """
    from taskbalance.tasks import excluded_metrics

    results: dict[str, float] = {}
    base: dict[str, float] = {}
    directions: dict[str, bool] = {}
    skipped: list[str] = []
    for task in tasks:
        for metric, higher in task.higher_is_better.items():
            key = f"{task.name}/{metric}"
            value = float(metrics.get(task.name, {}).get(metric, math.nan))
            b = float(baseline.get(task.name, {}).get(metric, math.nan))
            if excluded_metrics({key: b}, {key: bool(higher)}) or not math.isfinite(value):
                skipped.append(key)
                continue
            results[key], base[key], directions[key] = value, b, bool(higher)
    return results, base, directions, skipped


def selection_score(
    val: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Any],
) -> float:
    """Model-selection score of validation metrics ``val`` (lower is better).

    One task: its primary metric (negated when higher is better). Several tasks: Δm% of ``val``
    against ``baseline`` (the first epoch's validation metrics) over every metric of ``tasks``
    that enters by the one rule of :data:`taskbalance.tasks.DELTA_RULE`
    (:func:`taskbalance.tasks.task_delta`). A non-finite validation metric gives ``inf`` (never
    selected over a finite epoch).
    """
    from taskbalance.tasks import task_delta

    if len(tasks) == 1:
        task = tasks[0]
        value = float(val[task.name][task.primary_metric])
        if not math.isfinite(value):
            return math.inf
        return -value if task.higher_is_better[task.primary_metric] else value
    primary: dict[str, float] = {}
    for task in tasks:
        if not all(math.isfinite(float(v)) for v in val[task.name].values()):
            return math.inf
        if task.primary_metric in val[task.name]:
            value = float(val[task.name][task.primary_metric])
            primary[task.name] = -value if task.higher_is_better[task.primary_metric] else value
    breakdown = task_delta(val, baseline, {t.name: dict(t.higher_is_better) for t in tasks})
    if not breakdown.changes:  # no metric enters: fall back to the signed primary metrics
        return sum(primary.values())
    return float(breakdown.overall)


def make_loaders(
    train_set: Any,
    val_set: Any,
    test_set: Any = None,
    *,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader | None, DataLoader | None]:
    """The loaders of a run: training shuffled by a generator seeded with ``seed`` (a last batch
    of a single sample is dropped, for BatchNorm), validation and test in order with
    ``eval_batch_size`` (default ``batch_size``); ``None`` sets give ``None`` loaders. The
    training loader's ``generator`` is the shuffling state a checkpoint saves."""
    from taskbalance.data.loading import batch_loader

    generator = torch.Generator()
    generator.manual_seed(seed)
    n_train = len(train_set)
    # In-memory benchmarks are indexed a batch at a time (same batches as per-sample loading).
    train_loader = batch_loader(
        train_set,
        batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=n_train > batch_size and n_train % batch_size == 1,
    )
    eval_bs = eval_batch_size or batch_size

    def ordered(dataset: Any) -> DataLoader | None:
        if dataset is None:
            return None
        return batch_loader(dataset, eval_bs, num_workers=num_workers, pin_memory=pin_memory)

    return train_loader, ordered(val_set), ordered(test_set)


# ---------------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a run produced; mirrors ``results.json``.

    Attributes:
        best_epoch: the epoch selected on validation (1-based).
        val, test: ``{task: {metric: value}}`` at the best epoch (``test`` is ``None`` without
            a test loader).
        history: one record per epoch (see :mod:`taskbalance.training.logging`).
        seconds_per_step: mean wall time of a training step (evaluation excluded).
        num_parameters: parameters of the model used by the evaluated tasks.
        out_dir: the run directory (``None`` when nothing was written).
        config: the run's config dict.
    """

    best_epoch: int
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]] | None
    history: list[dict[str, Any]]
    seconds_per_step: float
    num_parameters: int
    out_dir: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    best_score: float | None = None
    epochs_completed: int = 0
    mode: str | None = None
    method: str | None = None
    tasks: list[str] = field(default_factory=list)
    trainable_tasks: list[str] = field(default_factory=list)
    selection: str = SELECTION_RULE

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` content."""
        return {
            "config": self.config,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "selection": self.selection,
            "val": self.val,
            "test": self.test,
            "seconds_per_step": self.seconds_per_step,
            "num_parameters": self.num_parameters,
            "epochs_completed": self.epochs_completed,
            "method": self.method,
            "mode": self.mode,
            "tasks": self.tasks,
            "trainable_tasks": self.trainable_tasks,
            "history": self.history,
        }

    @classmethod
    def load(cls, out_dir: str | Path) -> RunResult:
        """Read ``out_dir/results.json``."""
        from .rundir import load_results_file

        data = load_results_file(Path(out_dir) / "results.json")
        known = {f for f in cls.__dataclass_fields__ if f != "out_dir"}
        return cls(out_dir=Path(out_dir), **{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------- trainer


class _HeadsOnlyBalancer:
    """Stand-in for :class:`Balancer` when no shared parameter is trainable (frozen backbone).

    Task-specific parameters then get exactly what the Balancer would give them: loss methods
    backpropagate ``combine(L)``; gradient methods give each head its own task's gradient.
    """

    def __init__(self, method: Method, task_names: Sequence[str], check_finite: bool) -> None:
        if getattr(method, "needs_last_layer_grad_norms", False):
            raise ValueError(
                f"method {method.name!r} needs gradients of the last shared layer, but every "
                "shared parameter is frozen; unfreeze the backbone or use another method"
            )
        self.method = method
        self.task_names = tuple(task_names)
        self.check_finite = check_finite
        self.mode = "param"

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.method.parameters()

    def backward(self, losses: Mapping[str, Tensor | None], features: Any = None) -> StepInfo:
        items = [losses[n] for n in self.task_names]
        ref = next(x for x in items if x is not None)
        stacked = torch.stack([ref.new_zeros(()) if x is None else x for x in items])
        present = torch.tensor([x is not None for x in items], device=stacked.device)
        if self.check_finite and not bool(torch.isfinite(stacked.detach()).all()):
            bad = [
                n
                for n, x in zip(self.task_names, items, strict=True)
                if x is not None and not bool(torch.isfinite(x.detach()))
            ]
            raise ValueError(f"the loss of task {bad[0]!r} is not finite")
        all_present = all(x is not None for x in items)
        if isinstance(self.method, LossMethod):
            total = self.method._combine(stacked, None if all_present else present)
            weights = self.method.last_weights
        else:
            total = stacked[present].sum()
            weights = present.to(stacked.dtype)
        if total.requires_grad:
            total.backward()
        if weights is not None and weights.shape[0] == len(items):
            weights = weights.detach() * present.to(weights.dtype)
        return StepInfo(self.task_names, stacked.detach(), present, weights=weights)


class _EpochStats:
    """Per-epoch sums of StepInfo statistics, kept on the device."""

    def __init__(self, num_tasks: int, device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        z = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        self.dtype = dtype
        self.loss_sum, self.loss_count = z(num_tasks), z(num_tasks)
        self.w_sum, self.w_count = z(num_tasks), z(num_tasks)
        self.gn_sum, self.gn_count = z(num_tasks), z(num_tasks)
        self.cos_sum, self.cos_count = z(num_tasks, num_tasks), z(num_tasks, num_tasks)
        self.has_weights = self.has_norms = self.has_cos = False
        self.steps = 0
        self.skipped = 0

    def add(self, info: StepInfo) -> None:
        p = info.present.to(self.dtype)
        self.loss_sum += info.losses.detach().to(self.dtype) * p
        self.loss_count += p
        if info.weights is not None:
            self.has_weights = True
            self.w_sum += info.weights.detach().to(self.dtype) * p
            self.w_count += p
        if info.grad_norms is not None:
            self.has_norms = True
            self.gn_sum += info.grad_norms.detach().to(self.dtype) * p
            self.gn_count += p
        if info.cosines is not None:
            self.has_cos = True
            pp = torch.outer(p, p)
            self.cos_sum += info.cosines.detach().to(self.dtype) * pp
            self.cos_count += pp
        self.steps += 1

    def mean_losses(self) -> Tensor:
        """Mean loss per task over the epoch; ``NaN`` for a task that had no label at all."""
        mean = self.loss_sum / self.loss_count.clamp_min(1)
        return torch.where(self.loss_count > 0, mean, torch.full_like(mean, math.nan))

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """Plain numbers; one device synchronisation."""
        packed = (
            torch.cat(
                [
                    torch.stack(
                        [
                            self.loss_sum,
                            self.loss_count,
                            self.w_sum,
                            self.w_count,
                            self.gn_sum,
                            self.gn_count,
                        ]
                    ).flatten(),
                    self.cos_sum.flatten(),
                    self.cos_count.flatten(),
                ]
            )
            .cpu()
            .tolist()
        )
        T = len(names)
        rows = [packed[i * T : (i + 1) * T] for i in range(6)]
        cos_sum = packed[6 * T : 6 * T + T * T]
        cos_count = packed[6 * T + T * T :]

        def means(s: list[float], c: list[float]) -> dict[str, float | None]:
            return {n: (s[i] / c[i] if c[i] > 0 else None) for i, n in enumerate(names)}

        out: dict[str, Any] = {
            "train_loss": means(rows[0], rows[1]),
            "weights": means(rows[2], rows[3]) if self.has_weights else None,
            "grad_norms": means(rows[4], rows[5]) if self.has_norms else None,
            "cosines": None,
        }
        if self.has_cos:
            cos: dict[str, float | None] = {}
            for i in range(T):
                for j in range(i + 1, T):
                    k = i * T + j
                    cos[f"{names[i]}~{names[j]}"] = (
                        cos_sum[k] / cos_count[k] if cos_count[k] > 0 else None
                    )
            out["cosines"] = cos
        return out


class Trainer:
    """Train a multi-task model with a balancing method; evaluate, select, checkpoint, log.

    Args:
        model: a :class:`~taskbalance.models.MultiTaskModel` (or any module with
            ``shared_parameters()``, ``features`` for rep mode, returning ``{task: prediction}``).
        tasks: the :class:`~taskbalance.tasks.Task` objects to evaluate (a sequence or a dict
            name -> task); each needs a prediction of the same name from the model.
        method: a method object from :func:`taskbalance.create` (for ``len(trainable_tasks)``
            tasks) or a method name (then created with ``method_options``).
        train_loader, val_loader, test_loader: loaders of ``(inputs, targets, masks)`` batches.
            Validation is needed for model selection; test is optional.
        trainable_tasks: the tasks whose losses are trained and balanced (default: all
            ``tasks``); the others are only evaluated. Model selection uses the trainable tasks.
            Freeze parts that must not move (BatchNorm statistics included) with
            ``model.freeze(part)`` before building the Trainer.
        epochs: number of epochs :meth:`fit` trains for.
        steps: cap on the training steps per epoch.
        mode: ``"param"``, ``"rep"`` or ``None`` (auto: ``"rep"`` when
            ``method.prefers_rep_mode`` and the model supports it).
        device: ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` (validated, see :func:`resolve_device`).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, a callable ``params -> Optimizer`` or an
            optimizer (which must then hold ``balancer.parameters()`` too).
        lr, weight_decay, optimizer_options: for a named optimizer.
        scheduler: ``"none"``, ``"cosine"``, ``"step"``, a callable ``optimizer -> scheduler``,
            a scheduler object or ``None``; stepped once per epoch.
        scheduler_options: keyword arguments of a named scheduler.
        grad_clip: clip the global gradient norm (``None``: no clipping).
        amp, amp_dtype: CUDA mixed precision (``torch.autocast``); ``"float16"`` adds a
            ``GradScaler`` (the losses keep their values; their gradients are scaled).
        out_dir: run directory for checkpoints, history and results (``None``: keep in memory).
        run_config: dict stored in checkpoints and ``results.json``; on resume, differing keys
            (except :data:`~taskbalance.training.config.RESUME_MAY_DIFFER`) are an error.
        loader_generator: the train loader's shuffling generator, saved in checkpoints
            (default: ``train_loader.generator``).
        progress, tensorboard, save_best, callbacks, check_finite: see :class:`TrainConfig`;
            ``check_finite`` is passed to the Balancer.
        bn_recalibration: before each evaluation, re-estimate the BatchNorm running statistics
            for the current weights from this many training samples (in order; 0: off); see
            :mod:`taskbalance.training.batchnorm`.
        method_options, shared_parameters: for a method given by name; the shared parameters
            (default ``model.shared_parameters()``).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Any] | Mapping[str, Any],
        method: Method | str,
        train_loader: Iterable,
        val_loader: Iterable | None,
        test_loader: Iterable | None = None,
        *,
        trainable_tasks: Sequence[str] | None = None,
        epochs: int = 1,
        steps: int | None = None,
        mode: str | None = None,
        device: str | torch.device = "cpu",
        optimizer: Any = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer_options: Mapping[str, Any] | None = None,
        scheduler: Any = "none",
        scheduler_options: Mapping[str, Any] | None = None,
        grad_clip: float | None = None,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        out_dir: str | Path | None = None,
        run_config: Mapping[str, Any] | None = None,
        loader_generator: torch.Generator | None = None,
        progress: bool = True,
        tensorboard: bool = False,
        save_best: bool = True,
        callbacks: Sequence[Callback] = (),
        check_finite: bool = True,
        method_options: Mapping[str, Any] | None = None,
        shared_parameters: Iterable[nn.Parameter] | None = None,
        bn_recalibration: int = 1024,
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f"steps must be None or an integer >= 1, got {steps!r}")
        if isinstance(bn_recalibration, bool) or not isinstance(bn_recalibration, int) or (
            bn_recalibration < 0
        ):
            raise ValueError(f"bn_recalibration must be an integer >= 0, got {bn_recalibration!r}")
        self.bn_recalibration = bn_recalibration
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        task_list = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        if not task_list:
            raise ValueError("tasks is empty; give the Task objects to train and evaluate")
        self.tasks = {t.name: t for t in task_list}
        if len(self.tasks) != len(task_list):
            raise ValueError(f"task names must be unique, got {[t.name for t in task_list]}")
        names = list(self.tasks)
        trainable = list(names if trainable_tasks is None else trainable_tasks)
        unknown = [t for t in trainable if t not in self.tasks]
        if unknown or not trainable or len(set(trainable)) != len(trainable):
            raise ValueError(
                f"trainable_tasks must be distinct names among the tasks {names}; got {trainable}"
            )
        self.trainable_tasks = trainable

        if isinstance(method, str):
            method = create(method, len(trainable), **dict(method_options or {}))
        elif method_options:
            raise ValueError("method_options only apply when method is given by name")
        if not isinstance(method, Method):
            raise TypeError(f"method must come from taskbalance.create(...), got {type(method)!r}")
        if method.num_tasks != len(trainable):
            raise ValueError(
                f"the method was created for {method.num_tasks} task(s) but {len(trainable)} "
                f"task(s) are trained ({trainable}); create it with num_tasks={len(trainable)}"
            )
        self.method = method.to(self.device)

        supports_rep = getattr(model, "supports_rep_mode", True)
        if mode is None or mode == "auto":
            mode = "rep" if (method.prefers_rep_mode and supports_rep) else "param"
            if method.prefers_rep_mode and not supports_rep:
                warnings.warn(
                    f"method {method.name!r} prefers rep mode but {type(model).__name__} has no "
                    "shared representation; using param mode",
                    RuntimeWarning,
                    stacklevel=2,
                )
        elif mode not in ("param", "rep"):
            raise ValueError(f"mode must be 'param', 'rep' or None (auto), got {mode!r}")
        if mode == "rep" and not supports_rep and method.kind == "gradient":
            raise ValueError(
                f"mode='rep' needs a model with one shared representation; {type(model).__name__} "
                "has none (use mode='param')"
            )
        self.mode = mode
        self._rep = mode == "rep" and method.kind == "gradient"
        self._rep_detach = bool(getattr(model, "rep_detach", False))
        if self._rep_detach and method.kind == "gradient" and not self._rep:
            raise ValueError(
                "a model built with rep_detach=True stops task gradients at the shared features, "
                "so param mode cannot see per-task gradients of the backbone; use mode='rep' or "
                "build the model with rep_detach=False"
            )

        if shared_parameters is None:
            getter = getattr(model, "shared_parameters", None)
            if not callable(getter):
                raise ValueError(
                    f"{type(model).__name__} has no shared_parameters(); pass "
                    "shared_parameters=... or use a taskbalance.models.MultiTaskModel"
                )
            shared_parameters = getter()
        shared = [p for p in shared_parameters if p.requires_grad]
        if shared:
            self.balancer: Any = Balancer(
                method, shared, mode=mode, task_names=trainable, check_finite=check_finite
            )
        else:
            self.balancer = _HeadsOnlyBalancer(method, trainable, check_finite)

        self.optimizer = self._build_optimizer(optimizer, lr, weight_decay, optimizer_options)
        self.scheduler = self._build_scheduler(scheduler, scheduler_options, epochs)
        self._scheduler_name = scheduler if isinstance(scheduler, str) else None

        self.amp = bool(amp)
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(amp_dtype)
        if self.amp_dtype is None:
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}")
        self.scaler = None
        if self.amp:
            if self.device.type != "cuda":
                raise ValueError(
                    f"amp=True needs a CUDA device (got {self.device}); mixed precision is not "
                    "supported here, set amp=False"
                )
            if self.amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                raise ValueError("this GPU has no bfloat16 support; use amp_dtype='float16'")
            if self.amp_dtype == torch.float16:
                if getattr(method, "needs_last_layer_grad_norms", False):
                    raise ValueError(
                        f"method {method.name!r} compares gradient norms, which float16 loss "
                        "scaling changes; use amp_dtype='bfloat16'"
                    )
                if method.kind == "gradient":
                    warnings.warn(
                        f"float16 AMP: {method.name!r} aggregates per-task gradients multiplied by "
                        "the loss scale; exact only for aggregators that are positively "
                        "homogeneous in J. Prefer amp_dtype='bfloat16'.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                self.scaler = torch.amp.GradScaler("cuda")

        self.train_loader = train_loader
        self.val_loader = val_loader
        self.test_loader = test_loader
        self.loader_generator = (
            loader_generator
            if loader_generator is not None
            else getattr(train_loader, "generator", None)
        )
        self.epochs = epochs
        self.steps = steps
        self.grad_clip = grad_clip
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_config = dict(run_config or {})
        # A terminal gets tqdm bars (steps, loss, samples/s); anything else one line per epoch.
        # Worker processes (e.g. compare's parallel runs) share the terminal: lines, not bars.
        import multiprocessing

        worker = multiprocessing.parent_process() is not None
        self.progress = bool(progress) and sys.stderr.isatty() and not worker
        self.epoch_lines = bool(progress) and not self.progress
        self.tensorboard = tensorboard
        self.save_best = save_best
        self.callbacks = list(callbacks)
        #: ``{file name: text}`` written to ``out_dir`` when :meth:`fit` starts (``config.yaml``).
        self.start_files: dict[str, str] = {}
        self.num_parameters = _count_parameters(self.model, names)

        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._first_val: dict[str, dict[str, float]] | None = None
        self._train_time = 0.0
        self._train_steps = 0

    # ------------------------------------------------------------------ construction helpers
    def _params(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for p in [*self.model.parameters(), *self.balancer.parameters()]:
            seen.setdefault(id(p), p)
        return list(seen.values())

    def _build_optimizer(self, optimizer, lr, weight_decay, options) -> torch.optim.Optimizer:
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        params = self._params()
        if callable(optimizer) and not isinstance(optimizer, str):
            return optimizer(params)
        classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
        if optimizer not in classes:
            raise ValueError(f"optimizer must be one of {sorted(classes)}, got {optimizer!r}")
        kwargs = {"lr": lr, "weight_decay": weight_decay, **dict(options or {})}
        if optimizer == "sgd":
            kwargs.setdefault("momentum", 0.9)
        try:
            return classes[optimizer](params, **kwargs)
        except TypeError as err:
            raise ValueError(
                f"bad optimizer_options {dict(options or {})} for {optimizer!r}: {err}"
            ) from err

    def _build_scheduler(self, scheduler, options, epochs):
        if scheduler is None or scheduler == "none":
            if options:
                raise ValueError("scheduler_options given but scheduler is 'none'")
            return None
        if isinstance(scheduler, str):
            sched = torch.optim.lr_scheduler
            if scheduler == "cosine":
                cls, kwargs = sched.CosineAnnealingLR, {"T_max": epochs}
            elif scheduler == "step":
                cls, kwargs = sched.StepLR, {"step_size": max(1, epochs // 3), "gamma": 0.1}
            else:
                raise ValueError(f"scheduler must be 'none', 'cosine' or 'step', got {scheduler!r}")
            kwargs.update(dict(options or {}))
            try:
                return cls(self.optimizer, **kwargs)
            except TypeError as err:
                raise ValueError(f"bad scheduler_options {dict(options or {})}: {err}") from err
        if callable(scheduler) and not hasattr(scheduler, "step"):
            return scheduler(self.optimizer)
        return scheduler

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _bar(self, iterable, desc: str, total: int | None, leave: bool):
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)

    def _predict(self, inputs: Any) -> Mapping[str, Tensor]:
        preds = self.model(inputs)
        if not isinstance(preds, Mapping):
            raise ValueError(
                f"the model must return a dict task name -> prediction, got {type(preds).__name__}"
            )
        missing = [t for t in self.tasks if t not in preds]
        if missing:
            raise ValueError(f"the model returned no prediction for task(s) {missing}")
        return preds

    def train_step(self, batch: Any, stats: _EpochStats | None = None) -> StepInfo | None:
        """One optimisation step; ``None`` when no trained task has a label in the batch."""
        inputs, targets, masks = _unpack(batch)
        device = self.device
        labelled = {n: _mask_for(masks, n, device) for n in self.trainable_tasks}
        if not any(has for has, _ in labelled.values()):
            if stats is not None:
                stats.skipped += 1
            return None
        inputs = _to_device(inputs, device)
        with self._autocast():
            preds = self._predict(inputs)
            losses: dict[str, Tensor | None] = {}
            for name in self.trainable_tasks:
                has, mask = labelled[name]
                if not has:
                    losses[name] = None
                    continue
                target = _to_device(targets[name], device)
                losses[name] = self.tasks[name].loss(preds[name], target, mask)
        if all(v is None for v in losses.values()):
            if stats is not None:
                stats.skipped += 1
            return None
        scale = None
        if self.scaler is not None:
            scale = self.scaler.scale(torch.ones((), device=device))  # no host sync
            losses = {
                k: None if v is None else _ScaleGrad.apply(v.float(), scale)
                for k, v in losses.items()
            }
        else:
            losses = {k: None if v is None else v.float() for k, v in losses.items()}

        self.optimizer.zero_grad(set_to_none=True)
        features = self.model.features if self._rep else None
        info = self.balancer.backward(losses, features=features)
        if self._rep_detach:  # the heads consumed a detached copy: carry on into the backbone
            self.model.backward_shared()  # type: ignore[operator]
        if self.scaler is not None:
            # The method's own parameters were not behind the scaled losses: scale them too, so
            # that unscale_ divides every gradient by the same factor.
            for p in self.balancer.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self._params() if p.grad is not None], self.grad_clip
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if stats is not None:
            stats.add(info)
        return info

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch; returns the epoch's statistics (plain numbers)."""
        self.model.train()
        stats = _EpochStats(len(self.trainable_tasks), self.device)
        try:
            total = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        if self.steps is not None:
            total = self.steps if total is None else min(total, self.steps)
        start = time.perf_counter()
        bar = self._bar(self.train_loader, f"epoch {self.epoch + 1}/{self.epochs}", total, True)
        samples = 0
        shown = start
        for i, batch in enumerate(bar):
            if self.steps is not None and i >= self.steps:
                break
            self.train_step(batch, stats)
            samples += _batch_len(batch)
            if self.progress and (i == 0 or time.perf_counter() - shown > 0.5):
                # at most two host synchronisations a second, for the bar's loss
                shown = time.perf_counter()
                bar.set_postfix(  # type: ignore[attr-defined]
                    loss=f"{float(stats.loss_sum.sum() / stats.loss_count.sum().clamp_min(1)):.4g}",
                    samples_s=f"{samples / (shown - start):.0f}",
                    refresh=False,
                )
        if hasattr(bar, "close"):
            bar.close()
        if stats.steps == 0:
            raise ValueError(
                "no training step was taken this epoch: the train loader is empty or no batch "
                f"carries a label of the trained tasks {self.trainable_tasks}"
            )
        epoch_end = getattr(self.method, "epoch_end", None)
        if callable(epoch_end):
            epoch_end(stats.mean_losses().to(torch.float32))
        summary = stats.summary(self.trainable_tasks)  # the epoch's one synchronisation
        seconds = time.perf_counter() - start
        summary["steps"] = stats.steps
        summary["skipped_steps"] = stats.skipped
        summary["seconds_per_step"] = seconds / stats.steps
        summary["samples_per_second"] = samples / seconds if seconds > 0 else math.nan
        summary["seconds"] = seconds
        self._train_time += seconds
        self._train_steps += stats.steps
        return summary

    def recalibrate_batchnorm(self) -> int:
        """Re-estimate BatchNorm running statistics for the current weights from the first
        ``bn_recalibration`` training samples, in order (no RNG is consumed); see
        :mod:`taskbalance.training.batchnorm`. Returns the number of batches used."""
        from .batchnorm import batchnorm_layers, recalibrate_batchnorm

        dataset = getattr(self.train_loader, "dataset", None)
        if not self.bn_recalibration or dataset is None or not batchnorm_layers(self.model):
            return 0
        from taskbalance.data.loading import batch_loader, loader_batch_size

        batch = loader_batch_size(self.train_loader)
        loader = batch_loader(dataset, batch)
        inputs = (_to_device(_unpack(b)[0], self.device) for b in loader)

        def forward(x: Any) -> Any:
            with self._autocast():
                return self._predict(x)

        max_batches = max(1, -(-self.bn_recalibration // batch))
        return recalibrate_batchnorm(self.model, inputs, forward, max_batches=max_batches)

    @torch.no_grad()
    def evaluate(self, loader: Iterable, desc: str = "eval") -> dict[str, dict[str, float]]:
        """Every task's metrics over ``loader``: ``{task: {metric: value}}``."""
        was_training = self.model.training
        self.model.eval()
        metrics = {name: task.new_metrics() for name, task in self.tasks.items()}
        try:
            total = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        try:
            for batch in self._bar(loader, desc, total, False):
                inputs, targets, masks = _unpack(batch)
                with self._autocast():
                    preds = self._predict(_to_device(inputs, self.device))
                for name, acc in metrics.items():
                    has, mask = _mask_for(masks, name, self.device)
                    if has:
                        pred = preds[name]
                        if pred.is_floating_point():
                            pred = pred.float()
                        acc.update(pred, _to_device(targets[name], self.device), mask)
        finally:
            self.model.train(was_training)
        return {name: acc.compute() for name, acc in metrics.items()}

    def _selection_tasks(self) -> list[Any]:
        return [self.tasks[n] for n in self.trainable_tasks]

    def fit(self, resume: bool = False) -> RunResult:
        """Train until ``epochs``; with ``resume``, continue from ``out_dir/checkpoint.pt``."""
        if self.val_loader is None:
            raise ValueError("fit() needs a validation loader: model selection uses validation")
        if resume:
            self._resume()
        writer = None
        if self.out_dir is not None:
            remove_stale_temporaries(self.out_dir)  # left by a run killed mid-write
            if not resume:
                clear_run(self.out_dir)  # a new run: no file of an earlier run stays
            elif self.epoch < self.epochs:
                # an extended run: results.json of its shorter version is out of date
                (self.out_dir / "results.json").unlink(missing_ok=True)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name, text in self.start_files.items():  # only once a resume is known to fit
                atomic_write_text(self.out_dir / name, text)
            writer = HistoryWriter(
                self.out_dir, tensorboard=self.tensorboard, purge_step=self.epoch + 1
            )
        self._commit_best()  # a resumed run may have been killed between checkpoint and best.pt
        try:
            if writer is not None and self.history and self.epoch >= self.epochs:
                # a finished run killed before its history files were rewritten
                writer.write(self.history, tensorboard=False)
            while self.epoch < self.epochs:
                record = self._run_epoch()
                if self.out_dir is not None:
                    self.save_checkpoint(self.out_dir / CHECKPOINT_NAME)
                    self._commit_best()
                    assert writer is not None
                    writer.write(self.history)
                for callback in self.callbacks:
                    callback(self, record)
        finally:
            if writer is not None:
                writer.close()
        result = self.result()
        if self.out_dir is not None:
            atomic_write_json(self.out_dir / "results.json", result.to_dict())
        return result

    def _run_epoch(self) -> dict[str, Any]:
        summary = self.train_epoch()
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        self.recalibrate_batchnorm()
        val = self.evaluate(self.val_loader, "val")  # type: ignore[arg-type]
        test = self.evaluate(self.test_loader, "test") if self.test_loader is not None else None
        if self._first_val is None:
            self._first_val = val
        score = selection_score(val, self._first_val, self._selection_tasks())
        improved = self.best is None or score < self.best["score"]
        if improved:
            self.best = {"epoch": self.epoch, "score": score, "val": val, "test": test}
        assert self.best is not None
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "steps": summary["steps"],
            "skipped_steps": summary["skipped_steps"],
            "seconds_per_step": summary["seconds_per_step"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": summary["train_loss"],
            "weights": summary["weights"],
            "grad_norms": summary["grad_norms"],
            "cosines": summary["cosines"],
            "val": val,
            "test": test,
            "selection_score": score,
            "best_epoch": self.best["epoch"],
        }
        self.history.append(record)
        if self.epoch_lines:
            losses = [v for v in summary["train_loss"].values() if v is not None]
            print(
                f"{self._run_name()}epoch {self.epoch}/{self.epochs}: {summary['steps']} steps, "
                "mean task loss "
                f"{sum(losses) / max(len(losses), 1):.4g}, "
                f"{summary['samples_per_second']:.0f} samples/s, "
                f"{summary['seconds']:.1f}s; best epoch {self.best['epoch']}",
                file=sys.stderr,
                flush=True,
            )
        if improved and self.save_best and self.out_dir is not None:
            # Staged: it becomes best.pt only once the checkpoint naming this epoch is written
            # (see _commit_best), so a kill in between never leaves best.pt ahead of the run.
            state = self.model.state_dict()
            atomic_write(self.out_dir / _staged_best(self.epoch), lambda h: torch.save(state, h))
        return record

    def _run_name(self) -> str:
        """``"<parent>/<folder>: "`` of the run folder (which run a progress line is about)."""
        if self.out_dir is None:
            return ""
        return f"{self.out_dir.parent.name}/{self.out_dir.name}: "

    def _commit_best(self) -> None:
        """Promote the staged best weights of the checkpoint's best epoch to ``best.pt``; drop
        staged weights of epochs the checkpoint does not hold (a kill before it was written)."""
        if self.out_dir is None or not self.out_dir.is_dir():
            return
        best_epoch = self.best["epoch"] if self.best is not None else None
        for path in self.out_dir.glob(_staged_best("*")):
            try:
                epoch = int(path.name.removeprefix(".best-epoch").removesuffix(".pt"))
            except ValueError:
                continue
            if epoch == best_epoch and epoch <= self.epoch:
                atomic_replace(path, self.out_dir / BEST_NAME)
            else:
                path.unlink(missing_ok=True)

    def result(self) -> RunResult:
        """The current result (best epoch so far)."""
        if self.best is None:
            raise RuntimeError("no epoch has been trained yet")
        return RunResult(
            best_epoch=self.best["epoch"],
            best_score=self.best["score"],
            val=self.best["val"],
            test=self.best["test"],
            history=list(self.history),
            seconds_per_step=self._train_time / max(self._train_steps, 1),
            num_parameters=self.num_parameters,
            out_dir=self.out_dir,
            config=self.run_config,
            epochs_completed=self.epoch,
            mode=self.mode,
            method=self.method.name or type(self.method).__name__,
            tasks=list(self.tasks),
            trainable_tasks=list(self.trainable_tasks),
        )

    # ------------------------------------------------------------------ checkpoints
    def _generators(self) -> dict[str, torch.Generator]:
        return {"train_loader": self.loader_generator} if self.loader_generator is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "method": self.method.state_dict(),
            "rng": capture_rng_state(self._generators()),
            "history": self.history,
            "best": self.best,
            "first_val": self._first_val,
            "train_time": self._train_time,
            "train_steps": self._train_steps,
            "run_config": self.run_config,
            "tasks": list(self.tasks),
            "trainable_tasks": self.trainable_tasks,
            "mode": self.mode,
            "method_name": self.method.name,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (RNG states included)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = state["best"]
        self._first_val = state["first_val"]
        self._train_time = float(state["train_time"])
        self._train_steps = int(state["train_steps"])
        restore_rng_state(state["rng"], self._generators())

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` atomically to ``path``."""
        return save_checkpoint(path, self.state_dict())

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the directory holding checkpoint.pt)")
        state = load_checkpoint(self.out_dir / CHECKPOINT_NAME, map_location=self.device)
        problems = []
        for key, mine in (
            ("tasks", list(self.tasks)),
            ("trainable_tasks", self.trainable_tasks),
            ("mode", self.mode),
            ("method_name", self.method.name),
        ):
            if state.get(key) != mine:
                problems.append(f"{key}: checkpoint {state.get(key)!r}, now {mine!r}")
        saved_cfg = state.get("run_config") or {}
        ignore = set(RESUME_MAY_DIFFER)
        if (
            self._scheduler_name not in (None, "none")
            or saved_cfg.get("scheduler", "none") != "none"
        ):
            ignore.discard("epochs")  # the schedule's shape depends on the number of epochs
        for key in dict.fromkeys([*saved_cfg, *self.run_config]):
            if key in ignore:
                continue
            if saved_cfg.get(key) != self.run_config.get(key):
                problems.append(
                    f"{key}: checkpoint {saved_cfg.get(key)!r}, now {self.run_config.get(key)!r}"
                )
        if problems:
            raise ValueError(
                f"cannot resume from {str(self.out_dir / CHECKPOINT_NAME)!r}: the config differs "
                "from the checkpoint's in "
                + "; ".join(problems)
                + ". Resume with the original settings, or start the run again with --overwrite "
                "(overwrite=True)."
            )
        self.load_state_dict(state)


# ---------------------------------------------------------------------------------- train()


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    *,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
) -> RunResult:
    """Train a built-in benchmark as described by ``config`` (see ``docs/architecture.md``).

    ``config`` may be a :class:`TrainConfig`, a dict of its keys or a YAML file. Writes
    ``config.yaml``, ``history.jsonl``, ``history.csv``, ``checkpoint.pt``, ``best.pt`` and
    ``results.json`` to ``config.out_dir`` and returns the :class:`RunResult`.

    A new run (``resume`` false) in a folder holding another run's results is refused
    (:class:`~taskbalance.training.rundir.RunFolderError`, a ``ValueError``) unless
    ``overwrite``, which deletes that run's files first.
    """
    if isinstance(config, (str, Path)):
        config = TrainConfig.from_yaml(config)
    elif isinstance(config, Mapping):
        config = TrainConfig.from_dict(config)
    elif not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig, a dict or a YAML path, got {type(config)!r}"
        )
    device = resolve_device(config.device)  # fail before generating data
    out_dir = Path(config.out_dir)
    check_new_run(out_dir, resume=config.resume, overwrite=overwrite)
    if config.resume and not (out_dir / CHECKPOINT_NAME).is_file():
        load_checkpoint(out_dir / CHECKPOINT_NAME)  # raises the explanatory FileNotFoundError

    from taskbalance.data import load_benchmark

    data_seed = config.seed if config.data_seed is None else config.data_seed
    bench = load_benchmark(
        config.benchmark,
        seed=data_seed,
        size=config.size,
        cache_dir=config.cache_dir,
        labels=config.labels,
    )
    if config.pseudo_labels is not None:
        from taskbalance.data.pseudo_labels import with_pseudo_labels

        bench = with_pseudo_labels(bench, config.pseudo_labels)
    all_tasks = {t.name: t for t in bench.tasks}
    names = config.tasks if config.tasks is not None else list(all_tasks)
    tasks = [all_tasks[n] for n in names]

    seed_everything(config.seed)
    model = bench.build_model(**config.model_options)
    try:
        method = create(config.method, len(tasks), **config.method_options)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in config.method_options.items())
        raise ValueError(
            f"method {config.method!r} with options {given or 'none'}: {err}"
        ) from None

    train_loader, val_loader, test_loader = make_loaders(
        bench.train,
        bench.val,
        bench.test,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )

    trainer = Trainer(
        model,
        tasks,
        method,
        train_loader,
        val_loader,
        test_loader,
        epochs=config.epochs,
        steps=config.steps,
        mode=config.mode,
        device=device,
        optimizer=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        optimizer_options=config.optimizer_options,
        scheduler=config.scheduler,
        scheduler_options=config.scheduler_options,
        grad_clip=config.grad_clip,
        amp=config.amp,
        amp_dtype=config.amp_dtype,
        out_dir=out_dir,
        run_config=config.to_dict(),
        loader_generator=train_loader.generator,
        progress=config.progress,
        tensorboard=config.tensorboard,
        save_best=config.save_best,
        callbacks=callbacks,
    )
    import yaml

    trainer.start_files["config.yaml"] = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return trainer.fit(resume=config.resume)
