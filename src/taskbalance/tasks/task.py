"""The :class:`Task`: what a head predicts, how it is trained, how it is scored, how a missing label
is marked.

Missing labels are marked two ways (see ``docs/architecture.md``, "Batches"):

- per sample: ``masks[name]`` is a bool tensor ``[B]``, ``True`` where the sample carries this
  task's label (unlabelled samples hold a placeholder target, e.g. zeros);
- per element, inside dense targets: the ignore index of segmentation (255), zero depth, an
  all-zero normal vector. The task's loss and metrics know these marks (``Task.ignore_value``
  documents the one in use).

``Task.loss`` averages over labelled samples and valid elements only and returns ``None`` when the
batch holds none, so the caller drops the task for that step (no NaN, no gradient).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from taskbalance.tasks.kinds import TaskKind, get_kind
from taskbalance.tasks.losses import sample_mask
from taskbalance.tasks.metrics import EmptyMetricError, Metric

__all__ = ["LossFn", "Task", "TaskMetrics"]

LossFn = Callable[[Tensor, Tensor, "Tensor | None"], "Tensor | None"]
"""``loss_fn(prediction, target, mask) -> Tensor | None``: mean over labelled/valid elements, or
``None`` when there is none (see :mod:`taskbalance.tasks.losses`)."""

class _MetricDirections(dict[str, bool]):
    """``dict`` metric -> higher-is-better whose missing-key error names the task."""

    def __init__(self, task_name: str, items: Iterable[tuple[str, bool]]) -> None:
        super().__init__(items)
        self._task_name = task_name

    def __missing__(self, key: str) -> bool:
        raise KeyError(
            f"task {self._task_name!r} has no metric {key!r}; its metrics are {sorted(self)}"
        )


class Task:
    """One task of a multi-task network.

    Args:
        name: the task's name; the key of its target, mask and prediction in the batch dicts.
            Must not contain ``"/"`` (qualified metric names are ``"task/metric"``).
        loss_fn: ``loss_fn(prediction, target, mask) -> Tensor | None`` returning the mean over
            labelled samples / valid elements, or ``None`` when there is none
            (:mod:`taskbalance.tasks.losses` holds the usual ones).
        metrics: one :class:`~taskbalance.tasks.metrics.Metric` or a sequence of them. They are
            templates: :meth:`new_metrics` returns fresh copies, so one Task can be evaluated many
            times (and concurrently).
        primary_metric: the metric that model selection looks at; defaults to the first metric.
        kind: the kind of task, a registered name or a
            :class:`~taskbalance.tasks.kinds.TaskKind`; it carries the shape check and the
            pseudo-label confidence rule. ``"custom"`` checks only that prediction and target have
            the same batch size.
        ignore_value: the value that marks an unlabelled element inside dense targets (255 for
            segmentation, 0 for depth and normals), or ``None``. Informational: the loss and
            metrics apply it.

    Raises:
        ValueError: a bad name, kind, loss or metric list; a ``primary_metric`` the task does not
            produce; two metrics producing the same name.
    """

    def __init__(
        self,
        name: str,
        loss_fn: LossFn,
        metrics: Metric | Sequence[Metric],
        *,
        primary_metric: str | None = None,
        kind: str | TaskKind = "custom",
        ignore_value: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"a task name must be a non-empty string without '/', got {name!r}")
        task_kind = get_kind(kind, task=name)
        if not callable(loss_fn):
            raise ValueError(
                f"task {name!r}: loss_fn must be callable (prediction, target, mask) -> Tensor | "
                f"None, got {loss_fn!r}; see taskbalance.tasks.losses for ready ones"
            )
        templates = [metrics] if isinstance(metrics, Metric) else list(metrics)
        if not templates:
            raise ValueError(
                f"task {name!r}: give at least one metric (see taskbalance.tasks.metrics)"
            )
        directions: dict[str, bool] = {}
        for metric in templates:
            if not isinstance(metric, Metric):
                raise ValueError(
                    f"task {name!r}: metrics must be taskbalance.tasks.metrics.Metric objects, "
                    f"got {type(metric).__name__}"
                )
            for metric_name, higher in metric.higher_is_better.items():
                if metric_name in directions:
                    raise ValueError(
                        f"task {name!r}: two metrics both produce {metric_name!r}; rename one"
                    )
                directions[metric_name] = bool(higher)
        if primary_metric is None:
            primary_metric = next(iter(directions))
        elif primary_metric not in directions:
            raise ValueError(
                f"task {name!r}: primary_metric {primary_metric!r} is not one of its metrics "
                f"{list(directions)}"
            )
        self.name = name
        #: The :class:`~taskbalance.tasks.kinds.TaskKind` object; ``kind`` is its name.
        self.task_kind = task_kind
        self.kind: str = task_kind.name
        self.loss_fn = loss_fn
        self.ignore_value = ignore_value
        self._templates: tuple[Metric, ...] = tuple(templates)
        self._directions = directions
        self._primary = primary_metric

    # ---------------------------------------------------------------------------- introspection

    @property
    def metric_names(self) -> list[str]:
        """Names of the values ``new_metrics().compute()`` returns, in order."""
        return list(self._directions)

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Metric name -> ``True`` when a higher value is better (a copy; a missing name raises a
        ``KeyError`` that names the task and its metrics)."""
        return _MetricDirections(self.name, self._directions.items())

    @property
    def primary_metric(self) -> str:
        """The metric used for model selection."""
        return self._primary

    def is_higher_better(self, metric: str) -> bool:
        """Direction of ``metric``; ``KeyError`` naming the task and its metrics if unknown."""
        return self.higher_is_better[metric]

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """The metric templates (do not update them; use :meth:`new_metrics`)."""
        return self._templates

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, kind={self.kind!r}, metrics={self.metric_names}, "
            f"primary={self._primary!r})"
        )

    # ------------------------------------------------------------------------------- validation

    def validate(
        self, prediction: Tensor, target: Tensor, mask: Tensor | None = None
    ) -> Tensor | None:
        """Check shapes, mask and targets; return the mask as a bool tensor ``[B]`` (or ``None``).

        Raises:
            ValueError: prediction/target shapes do not fit the task's kind (naming both shapes);
                a mask that is not one bool per sample; NaN in the target at a labelled position.
        """
        return self._validate(prediction, target, mask)[0]

    def _validate(
        self, prediction: Tensor, target: Tensor, mask: Tensor | None
    ) -> tuple[Tensor | None, int]:
        """:meth:`validate`, also returning the number of labelled samples.

        The labelled count and the NaN check are reduced on the device and read back together:
        one host sync per call (none for an integer target without a mask).
        """
        self.task_kind.check_shapes(self.name, prediction, target)
        batch = target.shape[0]
        if mask is not None:
            mask = sample_mask(mask, batch, target.device, prefix=f"task {self.name!r}: ")
        check_nan = target.is_floating_point()
        counts: list[Tensor] = []
        if mask is not None:
            counts.append(mask.sum())
        if check_nan:
            nan = torch.isnan(target)
            if mask is not None:
                nan = nan & mask.view(-1, *([1] * (target.dim() - 1)))
            counts.append(nan.sum())
        if not counts:
            return mask, batch
        values = torch.stack(counts).tolist()
        labelled = int(values[0]) if mask is not None else batch
        nan_count = int(values[-1]) if check_nan else 0
        if nan_count:
            ignore = (
                f"or the ignore value {self.ignore_value!r} "
                if self.ignore_value is not None
                else ""
            )
            raise ValueError(
                f"task {self.name!r}: the target holds NaN at {nan_count} labelled "
                f"position(s); mark missing labels with the per-sample mask "
                f"(masks[{self.name!r}] = False) {ignore}instead of NaN"
            )
        return mask, labelled

    # ------------------------------------------------------------------------------------ loss

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor | None:
        """The task's loss averaged over labelled samples and valid elements only.

        Args:
            prediction: the head's output for the batch.
            target: ``targets[name]``.
            mask: ``masks[name]``, bool ``[B]`` (True = labelled), or ``None`` (all labelled).

        Returns:
            A scalar tensor, or ``None`` when the batch holds no labelled sample / valid element
            for this task (drop the task for this step).

        Raises:
            ValueError: see :meth:`validate`; a loss function returning a non-scalar.
        """
        mask, labelled = self._validate(prediction, target, mask)
        if labelled == 0:
            return None
        if labelled == target.shape[0]:
            mask = None
        value = self.loss_fn(prediction, target, mask)
        if value is None:
            return None
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise ValueError(
                f"task {self.name!r}: loss_fn must return a scalar tensor or None, got "
                f"{type(value).__name__}"
                + (f" of shape {list(value.shape)}" if isinstance(value, Tensor) else "")
            )
        return value

    # --------------------------------------------------------------------------------- metrics

    def new_metrics(self) -> TaskMetrics:
        """Fresh, empty accumulators for one evaluation of this task."""
        metrics = [copy.deepcopy(m) for m in self._templates]
        for metric in metrics:
            metric.reset()
        return TaskMetrics(self, metrics)


class TaskMetrics:
    """Accumulates one task's metrics over an evaluation (returned by :meth:`Task.new_metrics`).

    ``update`` validates like :meth:`Task.loss` and skips masked-out samples; ``compute`` returns
    ``{metric: value}`` over everything seen since the last ``reset``.
    """

    def __init__(self, task: Task, metrics: Sequence[Metric]) -> None:
        self.task = task
        self.metrics = tuple(metrics)
        self.num_samples = 0

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Accumulate a batch (``mask``: bool ``[B]``, True = labelled)."""
        mask = self.task.validate(prediction, target, mask)
        prediction = prediction.detach()
        if mask is not None:
            prediction, target = prediction[mask.to(prediction.device)], target[mask]
        if target.shape[0] == 0:
            return
        for metric in self.metrics:
            metric.update(prediction, target)
        self.num_samples += int(target.shape[0])

    def compute(self) -> dict[str, float]:
        """``{metric name: value}``.

        Raises:
            EmptyMetricError: no labelled sample (or no valid element, e.g. every pixel ignored)
                was seen since the last reset; the message names the task.
        """
        if self.num_samples == 0:
            raise EmptyMetricError(
                f"task {self.task.name!r}: no labelled sample was seen since the last reset(); "
                "check masks[...] of the evaluation data"
            )
        out: dict[str, float] = {}
        for metric in self.metrics:
            try:
                out.update(metric.compute())
            except EmptyMetricError as err:
                raise EmptyMetricError(f"task {self.task.name!r}: {err}") from err
        return out

    def reset(self) -> None:
        """Forget everything seen."""
        for metric in self.metrics:
            metric.reset()
        self.num_samples = 0

    def __repr__(self) -> str:
        return f"TaskMetrics({self.task.name!r}, samples={self.num_samples})"
