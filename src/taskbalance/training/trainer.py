"""The training loop: :class:`Trainer` (any model and data) and :func:`train` (a config).

One epoch of :meth:`Trainer.fit`:

1. ``model.set_epoch``; steps: forward, masked task losses, ``model.regularization()``'s gradient
   (:mod:`.model_hooks`), ``Balancer.backward``, optimizer step; ``StepInfo`` statistics summed
   on the device, read once per epoch (per step, only the Balancer's finiteness check syncs);
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

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from taskbalance.balancing import Balancer, StepInfo
from taskbalance.balancing.base import Method
from taskbalance.fileio import atomic_write_json, atomic_write_text, remove_stale_temporaries

from .build import check_counts, choose_mode, rep_features, resolve_method, resolve_tasks, shared_of
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .devices import resolve_device
from .epoch_stats import EpochStats
from .evaluation import accumulate_metrics, checked_predictions
from .factories import build_optimizer, build_scheduler
from .loaders import batch_len, loader_len, mask_for, split_batch, to_device, unpack_batch
from .logging import HistoryWriter
from .model_hooks import backward_regularization, set_epoch
from .precision import Precision
from .progress import bar, epoch_line, progress_style
from .results import RunResult, count_parameters
from .rundir import clear_run
from .selection import final_metrics, selection_score
from .trainer_state import (
    check_resumable,
    commit_best,
    load_trainer_state,
    stage_best,
    trainer_state,
)

__all__ = ["Callback", "Trainer"]

#: ``callback(trainer, record)`` after every epoch (after the checkpoint is written). Raising
#: stops training; the run can be resumed from the checkpoint.
Callback = Callable[["Trainer", dict[str, Any]], None]

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
        progress, tensorboard, save_best, callbacks, check_finite, nonfinite, final_epochs: see
            :class:`TrainConfig` (the checks go to the Balancer). affinity: log TAG affinity.
        bn_recalibration: re-estimate the BatchNorm running statistics from this many training
            samples (in order; 0: off) before each evaluation (:mod:`.batchnorm`).
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
        nonfinite: str = "raise",
        method_options: Mapping[str, Any] | None = None,
        shared_parameters: Iterable[nn.Parameter] | None = None,
        bn_recalibration: int = 1024,
        final_epochs: int | None = None,
        affinity: bool = False,
    ) -> None:
        check_counts(epochs, steps, bn_recalibration, final_epochs)
        self.final_epochs, self.affinity, self.nonfinite = final_epochs, affinity, nonfinite
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.tasks, self.trainable_tasks = resolve_tasks(tasks, trainable_tasks)
        self.method = resolve_method(method, self.trainable_tasks, method_options).to(self.device)
        self.mode = choose_mode(mode, self.method, model)
        self.balancer = self._balancer(shared_of(model, shared_parameters), check_finite)
        params = self._params()
        self.optimizer = build_optimizer(optimizer, params, lr, weight_decay, optimizer_options)
        self.scheduler = build_scheduler(scheduler, self.optimizer, epochs, scheduler_options)
        self._scheduler_name = scheduler if isinstance(scheduler, str) else None
        self.precision = Precision(amp, amp_dtype, self.device, self.method)
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.loader_generator = loader_generator or getattr(train_loader, "generator", None)
        self.epochs, self.steps, self.grad_clip = epochs, steps, grad_clip
        self.bn_recalibration = bn_recalibration
        self._set_output(out_dir, run_config, progress, tensorboard, save_best, callbacks)
        self._reset_progress()

    def _balancer(self, shared: list[nn.Parameter], check_finite: bool) -> Balancer:
        """One process (``DistributedTrainer``: a group); skips shared parameters frozen now."""
        return Balancer(self.method, shared, self.mode, task_names=self.trainable_tasks,
                        check_finite=check_finite, nonfinite=self.nonfinite, process_group=None)

    def _set_output(
        self,
        out_dir: str | Path | None,
        run_config: Mapping[str, Any] | None,
        progress: bool,
        tensorboard: bool,
        save_best: bool,
        callbacks: Sequence[Callback],
    ) -> None:
        """Where and how the run reports: run folder, config, progress, logs, callbacks."""
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_config = dict(run_config or {})
        self.progress, self.epoch_lines = progress_style(progress)
        self.tensorboard, self.save_best = tensorboard, save_best
        self.callbacks = list(callbacks)
        #: ``{file name: text}`` written to ``out_dir`` when :meth:`fit` starts (``config.yaml``).
        self.start_files: dict[str, str] = {}

    def _reset_progress(self) -> None:
        """The state of a run that has trained no epoch yet."""
        self.num_parameters = count_parameters(self.model, list(self.tasks))
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._first_val: dict[str, dict[str, float]] | None = None
        self._train_time = 0.0
        self._train_steps = 0

    @property
    def _rep_detach(self) -> bool:
        return bool(getattr(self.model, "rep_detach", False))

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The float16 ``GradScaler`` (``None`` otherwise)."""
        return self.precision.scaler

    @property
    def amp(self) -> bool:
        return self.precision.amp

    def _params(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for p in [*self.model.parameters(), *self.balancer.parameters()]:
            seen.setdefault(id(p), p)
        return list(seen.values())

    def _autocast(self) -> Any:
        return self.precision.autocast()

    def _predict(self, inputs: Any) -> Mapping[str, Tensor]:
        return checked_predictions(self.model(inputs), self.tasks)

    def train_step(self, batch: Any, stats: EpochStats | None = None) -> StepInfo | None:
        """One optimisation step; ``None`` when no trained task has a label in the batch (a
        double-sampling method gets the losses of ``independent_batches`` disjoint parts)."""
        k = getattr(self.method, "independent_batches", 1)
        chunks = split_batch(batch, k) if k > 1 else [batch]  # [] for a batch too small
        parts = [self._losses(b) for b in chunks] if chunks else [None]
        if None in parts:
            if stats is not None:
                stats.skipped += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        prepared = [self.precision.prepare_losses(p) for p in parts]  # type: ignore[arg-type]
        losses, scale = prepared[-1]
        backward_regularization(self.model, scale)  # of the last forward; unweighted, unbalanced
        if k > 1:
            info = self.balancer.backward_independent([p for p, _ in prepared])
        else:
            info = self.balancer.backward(losses, rep_features(self.model, losses, self.balancer))
        return self._apply_step(info, scale, stats)  # unscale, clip, optimizer step

    def _apply_step(self, info: StepInfo, scale: Any, stats: EpochStats | None) -> StepInfo:
        if stats is not None:
            stats.add(info)  # a skipped step: counted in nonfinite_steps
        if info.skipped:  # Balancer(nonfinite="skip"): drop the step's gradients, no update
            return self.precision.skip(self.optimizer, info)
        if self._rep_detach:  # the heads consumed a detached copy: carry on into the backbone
            self.model.backward_shared()  # type: ignore[operator]
        self.precision.unscale(self.optimizer, self.balancer.parameters(), scale)
        if self.grad_clip is not None:
            grads = [p for p in self._params() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, self.grad_clip)
        self.precision.step(self.optimizer)
        return info

    def _losses(self, batch: Any) -> dict[str, Tensor | None] | None:
        """The trained tasks' masked losses of a batch (``None`` for a task without labels);
        ``None`` when no trained task has a label (decided on the CPU masks, no device sync)."""
        inputs, targets, masks = unpack_batch(batch)
        device = self.device
        labelled = {n: mask_for(masks, n, device) for n in self.trainable_tasks}
        if not any(has for has, _ in labelled.values()):
            return None
        with self._autocast():
            preds = self._predict(to_device(inputs, device))
            losses: dict[str, Tensor | None] = {}
            for name in self.trainable_tasks:
                has, mask = labelled[name]
                target = to_device(targets[name], device) if has else None
                losses[name] = self.tasks[name].loss(preds[name], target, mask) if has else None
        return losses

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch; returns the epoch's statistics (plain numbers)."""
        set_epoch(self.model.train(), self.epoch)  # train mode; the model's own schedules
        lr = self.optimizer.param_groups[0]["lr"] if self.affinity else None
        stats = EpochStats(len(self.trainable_tasks), self.device, affinity_lr=lr)
        total = loader_len(self.train_loader)
        if self.steps is not None:
            total = self.steps if total is None else min(total, self.steps)
        start = time.perf_counter()
        desc = f"epoch {self.epoch + 1}/{self.epochs}"
        steps_bar = bar(self.train_loader, self.progress, desc, total, True)
        samples = 0
        shown = start
        for i, batch in enumerate(steps_bar):
            if self.steps is not None and i >= self.steps:
                break
            self.train_step(batch, stats)
            samples += batch_len(batch)
            if self.progress and (i == 0 or time.perf_counter() - shown > 0.5):
                # at most two host synchronisations a second, for the bar's loss
                shown = time.perf_counter()
                steps_bar.set_postfix(  # type: ignore[attr-defined]
                    loss=f"{float(stats.loss_sum.sum() / stats.loss_count.sum().clamp_min(1)):.4g}",
                    samples_s=f"{samples / (shown - start):.0f}",
                    refresh=False,
                )
        if hasattr(steps_bar, "close"):
            steps_bar.close()
        if stats.steps == 0:
            raise ValueError(
                "no training step was taken this epoch: the train loader is empty or no batch "
                f"carries a label of the trained tasks {self.trainable_tasks}"
            )
        self.method.epoch_end(stats.mean_losses().to(torch.float32))
        summary = stats.summary(self.trainable_tasks)  # the epoch's one synchronisation
        seconds = time.perf_counter() - start
        summary["steps"] = stats.steps
        summary["skipped_steps"] = stats.skipped
        summary["seconds_per_step"] = seconds / stats.steps
        self._epoch_samples = samples  # under torchrun: this rank's part of the union's
        summary["samples_per_second"] = samples / seconds if seconds > 0 else math.nan
        summary["seconds"] = seconds
        self._train_time += seconds
        self._train_steps += stats.steps
        return summary

    def recalibrate_batchnorm(self) -> int:
        """Re-estimate BatchNorm running statistics for the current weights from the first
        ``bn_recalibration`` training samples, in order (no global RNG is consumed); see
        :mod:`taskbalance.training.batchnorm`. Returns the number of batches used."""
        from .batchnorm import batchnorm_layers, recalibrate_batchnorm

        dataset = getattr(self.train_loader, "dataset", None)
        if not self.bn_recalibration or dataset is None or not batchnorm_layers(self.model):
            return 0
        from taskbalance.data.loading import batch_loader, loader_batch_size

        batch = loader_batch_size(self.train_loader)
        # without a generator of its own it would draw its seed from torch's global one
        loader = batch_loader(dataset, batch, generator=torch.Generator())
        inputs = (to_device(unpack_batch(b)[0], self.device) for b in loader)

        def forward(x: Any) -> Any:
            with self._autocast():
                return self._predict(x)

        max_batches = max(1, -(-self.bn_recalibration // batch))
        return recalibrate_batchnorm(self.model, inputs, forward, max_batches=max_batches)

    @torch.no_grad()
    def evaluate(self, loader: Iterable, desc: str = "eval") -> dict[str, dict[str, float]]:
        """Every task's metrics over ``loader``: ``{task: {metric: value}}``."""
        return {n: acc.compute() for n, acc in self._accumulate_metrics(loader, desc).items()}

    def _accumulate_metrics(self, loader: Iterable, desc: str) -> dict[str, Any]:
        """Every task's metric accumulators, updated with every batch of ``loader``."""
        return accumulate_metrics(
            self.model, self.tasks, loader, predict=self._predict, autocast=self._autocast,
            device=self.device, progress=self.progress, desc=desc,
        )  # fmt: skip

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
                self._end_epoch(self._run_epoch(), writer)
        finally:
            if writer is not None:
                writer.close()
        result = self.result()
        if self.out_dir is not None:
            atomic_write_json(self.out_dir / "results.json", result.to_dict())
        return result

    def _end_epoch(self, record: dict[str, Any], writer: HistoryWriter | None) -> None:
        """Checkpoint, best weights and history files of a finished epoch, then callbacks."""
        if self.out_dir is not None and writer is not None:
            self.save_checkpoint(self.out_dir / CHECKPOINT_NAME)
            self._commit_best()
            writer.write(self.history)
        for callback in self.callbacks:
            callback(self, record)

    def _run_epoch(self) -> dict[str, Any]:
        summary = self.train_epoch()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        self.recalibrate_batchnorm()
        val = self.evaluate(self.val_loader, "val")  # type: ignore[arg-type]
        test = self.evaluate(self.test_loader, "test") if self.test_loader is not None else None
        if self._first_val is None:
            self._first_val = val
        trained = [self.tasks[n] for n in self.trainable_tasks]
        score = selection_score(val, self._first_val, trained)
        improved = self.best is None or score < self.best["score"]
        if improved:
            self.best = {"epoch": self.epoch, "score": score, "val": val, "test": test}
        assert self.best is not None
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "steps": summary["steps"],
            "skipped_steps": summary["skipped_steps"],
            "seconds_per_step": summary["seconds_per_step"],
            "lr": lr,
            **{k: summary[k] for k in ("nonfinite_steps", "train_loss", "weights", "grad_norms",
                                       "cosines", "affinity") if k in summary},  # affinity: asked
            "val": val,
            "test": test,
            "selection_score": score,
            "best_epoch": self.best["epoch"],
        }
        self.history.append(record)
        if self.epoch_lines:
            epoch_line(self.out_dir, self.epoch, self.epochs, summary, self.best["epoch"])
        if improved and self.save_best and self.out_dir is not None:
            stage_best(self.out_dir, self.epoch, self.model.state_dict())
        return record

    def _commit_best(self) -> None:
        best_epoch = self.best["epoch"] if self.best is not None else None
        commit_best(self.out_dir, best_epoch, self.epoch)

    def result(self) -> RunResult:
        """The current result (best epoch so far)."""
        if self.best is None:
            raise RuntimeError("no epoch has been trained yet")
        val, test, selection = final_metrics(self.best, self.history, self.final_epochs)
        return RunResult(
            best_epoch=self.best["epoch"],
            best_score=self.best["score"],
            val=val,
            test=test,
            selection=selection,
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

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly."""
        return trainer_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (RNG states included)."""
        load_trainer_state(self, state)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` atomically to ``path``."""
        return save_checkpoint(path, self.state_dict())

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the directory holding checkpoint.pt)")
        state = load_checkpoint(self.out_dir / CHECKPOINT_NAME, map_location=self.device)
        check_resumable(self, state)
        self.load_state_dict(state)
