"""Staged training for partially labelled data: train some tasks first, then the others.

When the tasks of a dataset are labelled on very different fractions of the samples, the
best-labelled tasks can shape the shared backbone first, and the scarcely labelled ones are then
fitted on top of it, with the backbone frozen so that their few labels cannot over-fit (or pull
away) the shared features. Optionally the whole network is then fine-tuned on every task at a lower
learning rate.

A schedule is a list of :class:`Stage` objects; :func:`run_stages` trains them in order, each
stage one run of the runner (:func:`taskbalance.training.runner.run`: a config with
``trainable_tasks`` and ``freeze``, the schedule's model handed over), continuing from the
weights the previous stage left::

    stages = default_schedule(bench.train.label_fractions(), epochs=4, finetune_rounds=1)
    result = run_stages(model, bench.tasks, stages, train_loader, val_loader, test_loader)

What a stage guarantees:

* only the stage's tasks are trained: the balancing method is created for ``len(stage.tasks)``
  tasks (it balances the losses of those tasks only), the Trainer gets
  ``trainable_tasks=stage.tasks``, and every task NOT in the stage has its head frozen for the
  stage (no gradient, its BatchNorm statistics fixed);
* the parts listed in ``Stage.freeze`` (``"backbone"`` or task names) are frozen with
  ``model.freeze(part)``: their parameters and BatchNorm buffers stay bitwise unchanged;
* every task is evaluated after each epoch, so the history shows what a stage does to the tasks
  it does not train;
* after the stage the parts it froze are unfrozen again (parts the caller froze before stay
  frozen).

The final metrics of :class:`StagedResult` are those of the model after the last epoch of the
last stage (the weights :func:`run_stages` leaves in ``model``), on validation and test.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from taskbalance.training.runner import freeze_parts, unfreeze_parts
from taskbalance.validation import is_int, is_number

__all__ = [
    "Stage",
    "StageRecord",
    "StagedResult",
    "default_schedule",
    "run_stages",
    "validate_schedule",
]

_SHARED = ("backbone", "shared")


@dataclass(frozen=True)
class Stage:
    """One stage of a staged-training schedule.

    Args:
        tasks: the tasks trained (and balanced) in this stage; non-empty, distinct names.
        freeze: parts frozen during the stage: ``"backbone"`` (or ``"shared"``) and/or task names
            (``()``: nothing frozen besides the heads of tasks not in the stage).
        epochs: epochs of this stage (>= 1).
        lr: learning rate of this stage (``None``: the ``lr`` given to :func:`run_stages`).
        name: a label for logs and the output folder (default ``stage<k>``).

    Raises:
        ValueError: empty or repeated task names, a bad ``freeze`` entry, ``epochs < 1`` or a
            non-positive ``lr``.
    """

    tasks: tuple[str, ...]
    freeze: tuple[str, ...] = ()
    epochs: int = 1
    lr: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if not tasks:
            raise ValueError("a stage needs at least one task to train; got an empty task list")
        for t in tasks:
            if not isinstance(t, str) or not t:
                raise ValueError(f"stage task names must be non-empty strings, got {t!r}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a stage lists a task twice: {list(tasks)}")
        freeze = (self.freeze,) if isinstance(self.freeze, str) else tuple(self.freeze)
        for part in freeze:
            if not isinstance(part, str) or not part:
                raise ValueError(
                    f"stage freeze entries must be 'backbone' or task names, got {part!r}"
                )
        if not is_int(self.epochs) or self.epochs < 1:
            raise ValueError(f"stage epochs must be an integer >= 1, got {self.epochs!r}")
        if self.lr is not None and (
            not is_number(self.lr)
            or not math.isfinite(self.lr)
            or self.lr <= 0
        ):
            raise ValueError(f"stage lr must be None or a finite number > 0, got {self.lr!r}")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "freeze", freeze)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return {
            "name": self.name,
            "tasks": list(self.tasks),
            "freeze": list(self.freeze),
            "epochs": self.epochs,
            "lr": self.lr,
        }


def default_schedule(
    label_fractions: Mapping[str, float],
    *,
    epochs: int = 3,
    rest_epochs: int | None = None,
    finetune_rounds: int = 0,
    finetune_epochs: int = 1,
    lr: float = 1e-3,
    finetune_lr: float | None = None,
) -> list[Stage]:
    """The default schedule for tasks labelled on different fractions of the samples.

    1. ``"backbone+best"``: the backbone and the best-labelled tasks (every task whose fraction is
       the maximum), nothing frozen, ``epochs`` epochs;
    2. ``"rest"``: the other tasks with a frozen backbone, ``rest_epochs`` epochs (default
       ``epochs``); left out when every task has the maximum fraction;
    3. ``finetune_rounds`` times ``"finetune<k>"``: everything unfrozen, every task,
       ``finetune_epochs`` epochs at ``finetune_lr`` (default ``lr / 10``).

    Args:
        label_fractions: every task -> fraction of training samples labelled (e.g.
            ``bench.train.label_fractions()``), in task order.
        lr: the base learning rate (only used for the default ``finetune_lr``); stages 1 and 2
            use :func:`run_stages`'s ``lr``.

    Raises:
        ValueError: no task, a fraction outside [0, 1], a task with no label at all (fraction 0:
            it cannot be trained; annotate it first or leave it out), bad epoch counts.
    """
    if not isinstance(label_fractions, Mapping) or not label_fractions:
        raise ValueError("label_fractions must be a non-empty mapping task -> fraction")
    fractions: dict[str, float] = {}
    for task, value in label_fractions.items():
        if not is_number(value):
            raise ValueError(f"label fraction of {task!r} must be a number, got {value!r}")
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"label fraction of {task!r} must be in [0, 1], got {value!r}")
        fractions[str(task)] = value
    unlabelled = [t for t, f in fractions.items() if f == 0.0]
    if unlabelled:
        raise ValueError(
            f"task(s) {unlabelled} have no label at all and cannot be trained in any stage; "
            "annotate them first (taskbalance.experiments.annotate) or leave them out"
        )
    for key, value in (("epochs", epochs), ("finetune_epochs", finetune_epochs)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if rest_epochs is None:
        rest_epochs = epochs
    if not is_int(rest_epochs) or rest_epochs < 1:
        raise ValueError(f"rest_epochs must be None or an integer >= 1, got {rest_epochs!r}")
    if (
        not is_int(finetune_rounds)
        or finetune_rounds < 0
    ):
        raise ValueError(f"finetune_rounds must be an integer >= 0, got {finetune_rounds!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")

    best = max(fractions.values())
    first = tuple(t for t, f in fractions.items() if f == best)
    rest = tuple(t for t in fractions if t not in first)
    stages = [Stage(first, (), epochs, None, "backbone+best")]
    if rest:
        stages.append(Stage(rest, ("backbone",), rest_epochs, None, "rest"))
    tuned_lr = float(finetune_lr) if finetune_lr is not None else float(lr) / 10.0
    stages.extend(
        Stage(tuple(fractions), (), finetune_epochs, tuned_lr, f"finetune{k + 1}")
        for k in range(finetune_rounds)
    )
    return stages


@dataclass
class StageRecord:
    """What one stage did."""

    index: int
    stage: Stage
    frozen: list[str]
    method_num_tasks: int
    trainable_parameters: int
    result: Any  # taskbalance.training.RunResult
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.stage.to_dict(),
            "frozen": self.frozen,
            "method_num_tasks": self.method_num_tasks,
            "trainable_parameters": self.trainable_parameters,
            "seconds": self.seconds,
            "history": self.result.history,
        }


@dataclass
class StagedResult:
    """What :func:`run_stages` produced: one record per stage and the final metrics.

    ``val`` / ``test`` are every task's metrics after the last epoch of the last stage (the
    weights left in the model); ``test`` is ``None`` without a test loader.
    """

    stages: list[StageRecord]
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]] | None
    seconds: float
    out_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": [r.stage.to_dict() for r in self.stages],
            "stages": [r.to_dict() for r in self.stages],
            "val": self.val,
            "test": self.test,
            "seconds": self.seconds,
        }


def _task_names(model: nn.Module, tasks: Sequence[Any] | Mapping[str, Any]) -> list[str]:
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    names = [t.name for t in items]
    model_names = getattr(model, "task_names", None)
    if model_names is not None:
        missing = [n for n in names if n not in model_names]
        if missing:
            raise ValueError(f"the model has no head for task(s) {missing}; it has {model_names}")
    return names


def _stage_freeze(stage: Stage, names: Sequence[str]) -> list[str]:
    """Parts frozen during ``stage``: its own freeze list plus the heads of the other tasks."""
    parts = ["backbone" if p in _SHARED else p for p in stage.freeze]
    parts += [t for t in names if t not in stage.tasks]
    return list(dict.fromkeys(parts))


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def validate_schedule(
    model: Any, tasks: Sequence[Any] | Mapping[str, Any], stages: Sequence[Stage]
) -> None:
    """Check a schedule against a model and its tasks before training anything.

    Raises:
        ValueError: no stage; a stage naming a task the model/tasks do not have; a ``freeze``
            entry that is neither ``"backbone"`` nor a task; a stage that leaves no trainable
            parameter (it freezes everything its tasks use); a model without ``freeze``.
    """
    stages = list(stages)
    if not stages:
        raise ValueError("the schedule has no stage")
    names = _task_names(model, tasks)
    if not callable(getattr(model, "freeze", None)) or not callable(
        getattr(model, "unfreeze", None)
    ):
        raise ValueError(
            f"{type(model).__name__} has no freeze()/unfreeze(); staged training needs a "
            "taskbalance.models.MultiTaskNetwork"
        )
    for k, stage in enumerate(stages):
        if not isinstance(stage, Stage):
            raise ValueError(f"stage {k} must be a Stage, got {type(stage).__name__}")
        label = stage.name or f"stage {k}"
        unknown = [t for t in stage.tasks if t not in names]
        if unknown:
            raise ValueError(f"{label}: unknown task(s) {unknown}; the tasks are {names}")
        bad = [p for p in stage.freeze if p not in _SHARED and p not in names]
        if bad:
            raise ValueError(
                f"{label}: cannot freeze unknown part(s) {bad}; valid parts are 'backbone' and "
                f"the tasks {names}"
            )
        frozen = freeze_parts(model, _stage_freeze(stage, names))
        try:
            own = [p for t in stage.tasks for p in model.task_parameters(t)]
            trainable = len(model.shared_parameters()) + len(own)
        finally:
            unfreeze_parts(model, frozen)
        if trainable == 0:
            raise ValueError(
                f"{label} (tasks {list(stage.tasks)}, freeze {list(stage.freeze)}) leaves no "
                "trainable parameter: it freezes the backbone and every head it trains; "
                "unfreeze the backbone or the heads of its tasks"
            )


def run_stages(
    model: Any,
    tasks: Sequence[Any] | Mapping[str, Any],
    stages: Sequence[Stage],
    train_loader: Iterable,
    val_loader: Iterable,
    test_loader: Iterable | None = None,
    *,
    method: str = "ew",
    method_options: Mapping[str, Any] | None = None,
    mode: str | None = None,
    lr: float = 1e-3,
    steps: int | None = None,
    device: str = "cpu",
    out_dir: str | Path | None = None,
    trainer_options: Mapping[str, Any] | None = None,
    on_stage_start: Callable[[int, Stage, Any], None] | None = None,
    log: Callable[[str], None] | None = None,
    resume: bool = False,
    run_config: Mapping[str, Any] | None = None,
) -> StagedResult:
    """Train ``model`` stage by stage (see the module docstring).

    Args:
        model: a :class:`~taskbalance.models.MultiTaskNetwork` (``freeze``/``unfreeze``).
        tasks: every :class:`~taskbalance.tasks.Task` (all are evaluated after each epoch).
        stages: the schedule (e.g. :func:`default_schedule`); validated first
            (:func:`validate_schedule`).
        train_loader, val_loader, test_loader: loaders of ``(inputs, targets, masks)`` batches
            (one shuffling generator across stages: each stage continues its sequence).
        method, method_options: the balancing method, created anew for each stage with
            ``num_tasks = len(stage.tasks)`` (so stateful methods start fresh per stage).
        mode: balancer mode (``None``: automatic).
        lr: learning rate of stages whose ``lr`` is ``None``.
        steps: cap on training steps per epoch.
        out_dir: if given, each stage writes its run files to ``out_dir/<k>-<name>`` and
            ``out_dir/results.json`` gets the schedule and final metrics.
        trainer_options: more keys of every stage's
            :class:`~taskbalance.training.TrainConfig` (e.g. ``{"weight_decay": 1e-4}``).
        on_stage_start: ``callback(index, stage, trainer)`` called after a stage's freezing and
            Trainer are set up, before it trains (inspection, tests).
        log: a function receiving one line per stage.
        resume: with ``out_dir``, a stage whose folder holds a checkpoint continues from it
            (a finished stage only restores its end state: weights, optimizer, RNG), so a
            killed schedule ends exactly as an uninterrupted one.
        run_config: what names the run; stored in each stage's checkpoint with the stage, so a
            folder of another schedule or config is refused on resume.

    Returns:
        :class:`StagedResult`; the model keeps the weights of the end of the last stage.
    """
    stages = list(stages)
    validate_schedule(model, tasks, stages)
    settings = _StageSettings(
        tasks=tasks,
        loaders=(train_loader, val_loader, test_loader),
        method=method,
        method_options=dict(method_options or {}),
        mode=mode,
        lr=lr,
        steps=steps,
        device=device,
        options=_stage_options(trainer_options),
        run_config=dict(run_config or {}),
        resume=resume,
    )
    root = Path(out_dir) if out_dir is not None else None
    start = time.perf_counter()
    records: list[StageRecord] = []
    for k, stage in enumerate(stages):
        label = stage.name or f"stage{k + 1}"
        folder = None if root is None else root / f"{k + 1}-{label}"
        record = _train_stage(model, k, stage, folder, settings, on_stage_start)
        records.append(record)
        if log is not None:
            log(
                f"stage {k + 1}/{len(stages)} {label}: tasks {list(stage.tasks)}, frozen "
                f"{record.frozen or 'nothing'}, {stage.epochs} epoch(s) in {record.seconds:.1f}s"
            )
    return _staged_result(records, root, time.perf_counter() - start)


def _stage_options(trainer_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config keys every stage shares (what a stage sets itself is refused)."""
    from taskbalance.training import TrainConfig

    options = dict(trainer_options or {})
    for key in ("trainable_tasks", "freeze", "epochs", "lr", "method_options", "out_dir"):
        if key in options:
            raise ValueError(f"trainer_options must not set {key!r}; it is set per stage")
    unknown = [k for k in options if k not in TrainConfig.keys()]
    if unknown:
        raise ValueError(
            f"trainer_options has unknown key(s) {unknown}; they are TrainConfig keys: "
            f"{', '.join(TrainConfig.keys())}"
        )
    options.setdefault("progress", False)
    options.setdefault("save_best", False)
    options.setdefault("tensorboard", False)
    return options


@dataclass
class _StageSettings:
    """What every stage of one :func:`run_stages` call shares."""

    tasks: Sequence[Any] | Mapping[str, Any]
    loaders: tuple[Iterable, Iterable, Iterable | None]
    method: str
    method_options: dict[str, Any]
    mode: str | None
    lr: float
    steps: int | None
    device: str
    options: dict[str, Any]
    run_config: dict[str, Any]
    resume: bool


def _train_stage(
    model: Any,
    k: int,
    stage: Stage,
    folder: Path | None,
    settings: _StageSettings,
    on_stage_start: Callable[[int, Stage, Any], None] | None,
) -> StageRecord:
    """One stage: one run of the runner on the schedule's model (continued from its folder when
    resuming), with the stage's parts frozen; the stage's record."""
    from taskbalance.training.rundir import clear_run
    from taskbalance.training.runner import RunInputs, run

    if folder is not None and not settings.resume:
        clear_run(folder)  # a new schedule: the stage starts afresh
    seen: dict[str, Any] = {}

    def started(trainer: Any) -> None:
        seen["frozen"] = sorted(getattr(model, "frozen_parts", ()))
        seen["trainable"] = _trainable(model)
        seen["num_tasks"] = trainer.method.num_tasks
        if on_stage_start is not None:
            on_stage_start(k, stage, trainer)

    t0 = time.perf_counter()
    inputs = RunInputs(
        model=model,
        tasks=_task_list(settings.tasks),
        loaders=settings.loaders,
        identity={**settings.run_config, "stage": stage.to_dict()},
    )
    result = run(_stage_config(stage, folder, settings, model), inputs=inputs, on_start=started)
    return StageRecord(
        index=k,
        stage=stage,
        frozen=seen["frozen"],
        method_num_tasks=seen["num_tasks"],
        trainable_parameters=seen["trainable"],
        result=result,
        seconds=time.perf_counter() - t0,
    )


def _stage_config(stage: Stage, folder: Path | None, settings: _StageSettings, model: Any) -> Any:
    """The runner's config of one stage: its tasks trained, its parts frozen, its epochs and
    learning rate, the schedule's shared settings."""
    from taskbalance.training import TrainConfig

    freeze = _stage_freeze(stage, _task_names(model, settings.tasks))
    return TrainConfig.from_dict(
        {
            "benchmark": None,
            "method": settings.method,
            "method_options": settings.method_options,
            "mode": settings.mode,
            "trainable_tasks": list(stage.tasks),
            "freeze": freeze or None,
            "epochs": stage.epochs,
            "steps": settings.steps,
            "lr": stage.lr if stage.lr is not None else settings.lr,
            "device": settings.device,
            "out_dir": None if folder is None else str(folder),
            **settings.options,
        }
    )


def _task_list(tasks: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    return list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)


def _staged_result(records: list[StageRecord], root: Path | None, seconds: float) -> StagedResult:
    """The schedule's result (metrics after the last epoch of the last stage); written to
    ``root/results.json`` when there is a folder."""
    from taskbalance.fileio import atomic_write_json

    history = [
        {**row, "stage": r.stage.name or f"stage{r.index + 1}"}
        for r in records
        for row in r.result.history
    ]
    last = records[-1].result.history[-1]
    out = StagedResult(
        stages=records,
        val=last["val"],
        test=last.get("test"),
        seconds=seconds,
        out_dir=root,
        history=history,
    )
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / "results.json", out.to_dict())
    return out
