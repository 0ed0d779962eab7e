"""The :class:`~taskbalance.training.Trainer` over the ranks of a process group (``torchrun``).

Every rank takes the step one process would take on the union of the ranks' batches
(``Balancer(process_group=..., parameters=model.parameters(), counts=...)``), so every rank
holds the same parameters, optimizer and method state after each step. On top of the Trainer:

* training data: :class:`~taskbalance.training.distributed.UnionBatches` (the union batches do
  not depend on the number of ranks); a rank whose local batch has no label of a trained task
  still joins the step (its losses are ``None``); a step without any label on any rank is
  skipped by every rank together;
* evaluation: each rank evaluates its shard, the metric sums are reduced exactly
  (:func:`~taskbalance.training.distributed.reduce_metric`);
* files: rank 0 alone reads and writes the run folder (checkpoint, best weights, history,
  results); a checkpoint holds every rank's RNG states, and rank 0 sends the checkpoint it read
  to the other ranks on resume (no shared file system needed);
* errors: a rank that fails in its forward pass, its evaluation or rank 0's writing makes every
  rank raise (:func:`~taskbalance.training.distributed.check_all_ranks`), nobody waits forever.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from taskbalance.balancing import Balancer, StepInfo
from taskbalance.balancing.distributed import EmptyStepError
from taskbalance.balancing.distributed_step import abort_step

from .checkpoint import CHECKPOINT_NAME, capture_rng_state, load_checkpoint, restore_rng_state
from .distributed import UnionBatches, check_all_ranks, rank_and_world, reduce_task_metrics
from .distributed_run import epoch_sampler
from .epoch_stats import EpochStats
from .loaders import batch_len, mask_for, to_device, unpack_batch
from .logging import HistoryWriter
from .model_hooks import (
    backward_regularization,
    distributed_penalty_error,
    model_regularization,
)
from .results import RunResult
from .trainer import Trainer
from .trainer_state import check_resumable

__all__ = ["DistributedTrainer"]


class DistributedTrainer(Trainer):
    """A :class:`Trainer` whose ranks train one model together (see the module docstring).

    Takes the Trainer's arguments plus ``train_sampler`` (whose epoch is set before each epoch;
    default: the train loader's :class:`UnionBatches`, if it has one) and ``process_group``
    (default: the default group). ``out_dir`` is the run folder of rank 0; the other ranks
    write nothing. Every rank must call :meth:`fit` (it is a sequence of collectives).
    """

    data_order = "union"

    def __init__(
        self,
        *args: Any,
        train_sampler: UnionBatches | None = None,
        process_group: Any = None,
        **kwargs: Any,
    ) -> None:
        if not dist.is_initialized():
            raise ValueError(
                "DistributedTrainer needs torch.distributed initialised (run under torchrun, "
                "or call taskbalance.training.distributed.init_from_environment() first)"
            )
        self.group = process_group
        self.rank, self.world = rank_and_world(process_group)
        self.train_sampler = train_sampler or epoch_sampler(args[3] if len(args) > 3 else None)
        self._rank_rng: list[Any] | None = None
        super().__init__(*args, **kwargs)
        if self._rep_detach:
            raise ValueError(
                "a model built with rep_detach=True backpropagates into the backbone after the "
                "balancing step, outside the reduction over ranks; build it with "
                "rep_detach=False to train under torchrun"
            )
        #: The run folder (rank 0 reads and writes it; ``out_dir`` is ``None`` elsewhere).
        self.run_dir = self.out_dir
        if self.rank != 0:
            self.out_dir = None
            self.progress = self.epoch_lines = False

    def _balancer(self, shared: list[nn.Parameter], check_finite: bool) -> Balancer:
        """Over the group (``parameters``: every rank reduces the same list, also when its batch
        has no label of some task); a one-rank group is one process."""
        group: Any = None
        if self.world > 1:
            group = self.group if self.group is not None else dist.group.WORLD
        return Balancer(
            self.method,
            shared,
            self.mode,
            task_names=self.trainable_tasks,
            check_finite=check_finite,
            nonfinite=self.nonfinite,
            process_group=group,
            parameters=list(self.model.parameters()),
        )

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> dict[str, Any]:
        """One epoch; ``samples_per_second`` counts the union's samples (every rank's), over
        this rank's time."""
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(self.epoch)
        summary = super().train_epoch()
        union = torch.tensor(self._epoch_samples, dtype=torch.int64, device=self.device)
        dist.all_reduce(union, group=self.group)
        seconds = summary["seconds"]
        summary["samples_per_second"] = int(union) / seconds if seconds > 0 else math.nan
        return summary

    def train_step(self, batch: Any, stats: EpochStats | None = None) -> StepInfo | None:
        """One union-batch step; every rank calls it for every step, also with no label."""
        try:
            losses, counts = self._rank_losses(batch)
            if self.world > 1 and model_regularization(self.model) is not None:
                raise distributed_penalty_error(self.model)
            scale = None
            if any(v is not None for v in losses.values()):
                losses, scale = self.precision.prepare_losses(losses)
            elif self.scaler is not None:  # the same scale as the ranks holding losses
                scale = self.scaler.scale(torch.ones((), device=self.device))
        except Exception as exc:  # the other ranks raise too, in the Balancer's first collective
            abort_step(self.balancer, exc)
        self.optimizer.zero_grad(set_to_none=True)
        backward_regularization(self.model, scale)  # one rank only (refused above otherwise)
        rep = self.mode == "rep" and self.method.kind == "gradient"  # the union's rep mode
        features: Any = self.model.features if rep else None
        try:
            info = self.balancer.backward(losses, features=features, counts=counts)
        except EmptyStepError:  # raised on every rank alike
            if stats is not None:
                stats.skipped += 1
            return None
        return self._apply_step(info, scale, stats)

    def _rank_losses(self, batch: Any) -> tuple[dict[str, Tensor | None], dict[str, int]]:
        """This rank's losses (``None`` for a task without labels here) and labelled-sample
        counts (the weights of the rank's losses in the union losses)."""
        inputs, targets, masks = unpack_batch(batch)
        n = batch_len(batch)
        losses: dict[str, Tensor | None] = {}
        counts: dict[str, int] = {}
        with self._autocast():
            preds = self._predict(to_device(inputs, self.device))
            for name in self.trainable_tasks:
                has, mask = mask_for(masks, name, self.device)
                given = None if masks is None else masks.get(name)
                counts[name] = n if given is None else int(torch.as_tensor(given).bool().sum())
                target = to_device(targets[name], self.device) if has else None
                losses[name] = self.tasks[name].loss(preds[name], target, mask) if has else None
                if losses[name] is None:  # also a dense target without a valid element
                    counts[name] = 0
        return losses, counts

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader: Any, desc: str = "eval") -> dict[str, dict[str, float]]:
        """Every task's metrics over the union of the ranks' shards (``loader`` is this rank's)."""
        metrics: dict[str, Any] = {}
        error = None
        try:
            metrics = self._accumulate_metrics(loader, desc)
        except Exception as exc:
            error = exc
        check_all_ranks(error, self.group, f"evaluation ({desc})")
        for acc in metrics.values():
            reduce_task_metrics(acc, self.group)
        return {name: acc.compute() for name, acc in metrics.items()}

    # ------------------------------------------------------------------ files
    def _end_epoch(self, record: dict[str, Any], writer: HistoryWriter | None) -> None:
        """Every rank's RNG states to rank 0, which writes; a failure stops every rank."""
        error = None
        try:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, capture_rng_state(), group=self.group)
            self._rank_rng = gathered
            super()._end_epoch(record, writer)
        except Exception as exc:
            error = exc
        check_all_ranks(error, self.group, "the end of an epoch (checkpoint, history, callbacks)")

    def result(self) -> RunResult:
        """The result (the same on every rank), naming the run folder rank 0 writes."""
        return dataclasses.replace(super().result(), out_dir=self.run_dir)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["world_size"] = self.world
        state["rank_rng"] = self._rank_rng
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rank r restores rank r's RNG states when the world size is the checkpoint's; with
        another world size every rank restores rank 0's."""
        super().load_state_dict(state)
        saved = state.get("rank_rng")
        if saved and state.get("world_size") == self.world:
            restore_rng_state(saved[self.rank])

    def _resume(self) -> None:
        """Rank 0 reads and checks the checkpoint and sends it to every rank."""
        box: list[Any] = [None]
        error = None
        if self.rank == 0:
            try:
                if self.run_dir is None:
                    raise ValueError("resume=True needs out_dir (the directory of checkpoint.pt)")
                box[0] = load_checkpoint(Path(self.run_dir) / CHECKPOINT_NAME)
                check_resumable(self, box[0])
            except Exception as exc:
                error = exc
        check_all_ranks(error, self.group, "reading the checkpoint")
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        dist.broadcast_object_list(box, src=src, group=self.group)
        self.load_state_dict(box[0])
