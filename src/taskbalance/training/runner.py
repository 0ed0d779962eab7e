"""The one runner: every training of taskbalance goes through :func:`run` (or :func:`train`,
the ``taskbalance train`` command's strict form of it).

A run is a :class:`TrainConfig`. The runner builds the data (a built-in benchmark or a real dataset,
:mod:`~taskbalance.training.sources`), model, method and
:class:`~taskbalance.training.Trainer` from it (:func:`build_trainer`), freezes the parts the
config names, and fits. An experiment whose data or model is not a built-in benchmark's (a
teacher on the labelled samples only, the stages of one schedule continuing one model, a
partially labelled copy) hands those pieces over in :class:`RunInputs`; everything else still
comes from the config, and ``RunInputs.identity`` names what the config cannot.

:func:`run` continues whatever is in the run folder: a finished run is reused (its
``results.json`` read back, or its end state restored into a model handed over), an unfinished
one resumes from its checkpoint, and a folder of other settings is refused naming
``--overwrite``. So an experiment killed at any point ends, when rerun, exactly as an
uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from taskbalance.balancing import create
from taskbalance.balancing.independent_step import (
    independent_setup_conflict,
    single_sampling_error,
)

from .build import choose_mode
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import RESUME_MAY_DIFFER, TrainConfig, _plain, unrecorded_files_note
from .devices import resolve_device, seed_everything
from .distributed_run import (
    decide_on_rank0,
    in_process_group,
    on_rank0,
    rank_device,
    union_loaders,
)
from .distributed_trainer import DistributedTrainer
from .loaders import make_loaders, resolve_workers
from .results import RunResult
from .rundir import check_new_run, load_results_file
from .sources import data_tasks, load_data
from .trainer import Callback, Trainer

__all__ = [
    "RunInputs",
    "build_trainer",
    "check_method",
    "double_sampling_problem",
    "has_checkpoint",
    "run",
    "train",
]

#: ``log(line)``: receives one line per run (reused, resumed or trained).
Log = Callable[[str], None]


@dataclass
class RunInputs:
    """What an experiment hands :func:`run` instead of letting it build from the config.

    Attributes:
        benchmark: data used instead of the config's benchmark (a partially labelled or
            annotated copy); its ``tasks``, ``build_model`` and splits are used.
        model: the module to train, in place (the stages of a schedule continue one model); a
            finished run restores its end weights into it.
        tasks: the tasks evaluated (default: the benchmark's, filtered by ``config.tasks``).
        loaders: ``(train, val, test)`` loaders used instead of the benchmark's splits.
        identity: what names these inputs (benchmark, label subset, stage, ...); stored with the
            config in checkpoints and ``results.json`` under ``"inputs"``, so a folder holding a
            run of other inputs is refused, not mixed.
    """

    benchmark: Any = None
    model: nn.Module | None = None
    tasks: Sequence[Any] | None = None
    loaders: tuple[Iterable, Iterable | None, Iterable | None] | None = None
    identity: Mapping[str, Any] = field(default_factory=dict)


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    *,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
) -> RunResult:
    """Train on a built-in benchmark or a real dataset as described by ``config`` (see
    ``docs/architecture.md``).

    ``config`` may be a :class:`TrainConfig`, a dict of its keys or a YAML file. Writes
    ``config.yaml``, ``history.jsonl``, ``history.csv``, ``checkpoint.pt``, ``best.pt`` and
    ``results.json`` to ``config.out_dir`` and returns the :class:`RunResult`.

    Unlike :func:`run`, it continues a run only when asked (``resume``): a new run in a folder
    holding another run's results is refused
    (:class:`~taskbalance.training.rundir.RunFolderError`, a ``ValueError``) unless
    ``overwrite``, which deletes that run's files first.
    """
    config = _as_config(config)
    resolve_device(config.device)  # fail before generating data

    def check_folder() -> None:
        if config.out_dir is not None:
            out_dir = Path(config.out_dir)
            check_new_run(out_dir, resume=config.resume, overwrite=overwrite)
            if config.resume and not has_checkpoint(out_dir):
                load_checkpoint(out_dir / CHECKPOINT_NAME)  # the explanatory FileNotFoundError

    if in_process_group():  # under torchrun rank 0 alone reads and writes the run folder
        on_rank0(check_folder, "checking the run folder")
    else:
        check_folder()
    return _fit(config, None, callbacks, None, resume=config.resume)


def run(
    config: TrainConfig | Mapping[str, Any] | str | Path,
    *,
    inputs: RunInputs | None = None,
    callbacks: Sequence[Callback] = (),
    on_start: Callable[[Trainer], None] | None = None,
    log: Log | None = None,
    label: str = "",
) -> RunResult:
    """Train ``config``, continuing whatever its folder holds (the module docstring).

    Args:
        config: a :class:`TrainConfig`, a dict of its keys or a YAML file; ``resume`` is
            ignored (decided from the folder).
        inputs: data, model, tasks or loaders of the experiment (:class:`RunInputs`).
        callbacks: called after every epoch (see :class:`~taskbalance.training.Trainer`).
        on_start: ``on_start(trainer)`` once the Trainer is built and the config's parts are
            frozen, before it trains (inspection, tests).
        log, label: ``log`` receives ``"<label>: reused|trained|resumed and trained ..."``.

    Raises:
        ValueError: the folder holds a run of other settings (naming ``--overwrite``); a bad
            config or input.
    """
    config = _as_config(config).replace(resume=False)
    out = None if config.out_dir is None else Path(config.out_dir)
    start = time.perf_counter()

    def look() -> tuple[RunResult | None, bool]:
        return _finished(out, config, inputs), has_checkpoint(out)

    # under torchrun rank 0 alone reads the folder; every rank takes its decision
    reused, resume = decide_on_rank0(look, f"reading {out}") if in_process_group() else look()
    if reused is not None:
        _say(log, f"{label}: reused ({out / 'results.json'})")  # type: ignore[operator]
        return reused
    result = _fit(config, inputs, callbacks, on_start, resume=resume)
    seconds = time.perf_counter() - start
    _say(log, f"{label}: {'resumed and ' if resume else ''}trained in {seconds:.1f}s")
    return result


def has_checkpoint(folder: str | Path | None) -> bool:
    """``folder`` holds a run's checkpoint: a run there continues from it."""
    return folder is not None and (Path(folder) / CHECKPOINT_NAME).is_file()


def build_trainer(
    config: TrainConfig | Mapping[str, Any],
    *,
    inputs: RunInputs | None = None,
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """The :class:`Trainer` of ``config`` (and ``inputs``), as :func:`run` builds it (global
    RNGs seeded with ``config.seed`` and the model built, unless one is handed over; then the
    method and the loaders), without freezing ``config.freeze``; nothing is written until it
    fits."""
    config = _as_config(config)
    inputs = inputs or RunInputs()
    return _trainer(config, inputs, _Pieces.build(config, inputs), callbacks)


@dataclass
class _Pieces:
    """What a Trainer is made of, built from a config and the handed-over inputs."""

    device: Any
    model: nn.Module
    tasks: list[Any]
    method: Any
    loaders: tuple[Iterable, Iterable | None, Iterable | None]

    @classmethod
    def build(cls, config: TrainConfig, inputs: RunInputs) -> _Pieces:
        group = in_process_group()  # under torchrun: training/distributed_trainer.py
        device = resolve_device(rank_device(config.device) if group else config.device)
        bench = _benchmark(config, inputs)
        tasks = _tasks(config, inputs, bench)
        if inputs.model is not None:
            model = inputs.model  # its owner seeded before building it (and may have trained it)
        else:
            seed_everything(config.seed)
            model = bench.build_model(**config.model_options)
        trained = config.trainable_tasks or [t.name for t in tasks]
        method = _method(config, len(trained))
        _check_sampling(config, method, model, group)
        if group and inputs.loaders is not None:
            raise ValueError(
                "loaders handed over cannot be shared out among the ranks under torchrun; "
                "hand over the data (RunInputs.benchmark) instead"
            )
        load: Any = union_loaders if group else make_loaders
        loaders = inputs.loaders or load(
            bench.train,
            bench.val,
            bench.test,
            batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size,
            seed=config.seed,
            num_workers=resolve_workers(config.num_workers, bench, device.type),
            pin_memory=device.type == "cuda",
        )
        return cls(device, model, tasks, method, loaders)


def _trainer(
    config: TrainConfig, inputs: RunInputs, pieces: _Pieces, callbacks: Sequence[Callback]
) -> Trainer:
    kind: Any = DistributedTrainer if in_process_group() else Trainer
    trainer = kind(
        pieces.model,
        pieces.tasks,
        pieces.method,
        *pieces.loaders,
        trainable_tasks=config.trainable_tasks,
        device=pieces.device,
        out_dir=config.out_dir,
        run_config=_run_config(config, inputs),
        loader_generator=getattr(pieces.loaders[0], "generator", None),
        callbacks=callbacks,
        **_trainer_options(config),
    )
    if not _given_data(inputs):
        import yaml

        trainer.start_files["config.yaml"] = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return trainer


def _fit(
    config: TrainConfig,
    inputs: RunInputs | None,
    callbacks: Sequence[Callback],
    on_start: Callable[[Trainer], None] | None,
    *,
    resume: bool,
) -> RunResult:
    """Build, freeze ``config.freeze`` (before the Trainer sees the model), fit, unfreeze
    (parts frozen before the run stay frozen)."""
    inputs = inputs or RunInputs()
    pieces = _Pieces.build(config, inputs)
    frozen = freeze_parts(pieces.model, config.freeze or ())
    try:
        trainer = _trainer(config, inputs, pieces, callbacks)
        if on_start is not None:
            on_start(trainer)
        return trainer.fit(resume=resume)
    finally:
        unfreeze_parts(pieces.model, frozen)


def freeze_parts(model: Any, parts: Iterable[str]) -> list[str]:
    """Freeze ``parts`` of ``model`` (``model.freeze(part)``); returns the ones this call froze
    (parts already frozen are left alone, so :func:`unfreeze_parts` keeps them frozen)."""
    parts = list(parts)
    if parts and not callable(getattr(model, "freeze", None)):
        raise ValueError(
            f"{type(model).__name__} has no freeze(); freezing {parts} needs a "
            "taskbalance.models.MultiTaskNetwork"
        )
    already = set(getattr(model, "frozen_parts", ()))
    done = []
    for part in parts:
        if part not in already:
            model.freeze(part)
            done.append(part)
    return done


def unfreeze_parts(model: Any, parts: Iterable[str]) -> None:
    """Undo :func:`freeze_parts` (in reverse order)."""
    for part in reversed(list(parts)):
        model.unfreeze(part)


def _finished(out: Path | None, config: TrainConfig, inputs: RunInputs | None) -> RunResult | None:
    """The result of a finished run in ``out`` with the same settings (``None``: none there, or
    a model was handed over: its end state is restored by resuming instead)."""
    if out is None or not (out / "results.json").exists():
        return None
    if inputs is not None and inputs.model is not None:
        return None
    results = load_results_file(out / "results.json")
    mine, theirs = _run_config(config, inputs or RunInputs()), results.get("config", {})
    # its results were computed with its epochs and final_epochs: reuse needs the same ones
    ignore = RESUME_MAY_DIFFER - {"epochs", "final_epochs"}
    diff = {
        k: (mine.get(k), theirs.get(k))
        for k in dict.fromkeys([*mine, *theirs])
        if k not in ignore and mine.get(k) != theirs.get(k)
    }
    if diff:
        shown = "; ".join(
            (k == "inputs" and unrecorded_files_note(b, a)) or f"{k}: {b!r} there, {a!r} now"
            for k, (a, b) in diff.items()
        )
        raise ValueError(
            f"{out} holds a finished run with other settings ({shown}); "
            "replace it with --overwrite or use another --out folder"
        )
    return RunResult.from_json(results, out)


def _run_config(config: TrainConfig, inputs: RunInputs) -> dict[str, Any]:
    """What names the run in its checkpoint and ``results.json``."""
    stored = config.to_dict()
    identity = dict(inputs.identity)
    if config.experiment is not None:
        # the config names the experiment file by its path only: its content names the run
        identity["experiment_file"] = _experiment_content(config.experiment)
    if config.dataset is not None and config.out_dir is not None:
        # data_root may differ (the same files moved): the files themselves name the data
        # (a run folder inside data_root left out: its files change as the run goes). A run
        # without a folder (compare's timing pass) is never reused: its data is not walked.
        from taskbalance.data.registry import dataset_fingerprint

        assert config.data_root is not None  # TrainConfig checks
        files = dataset_fingerprint(config.dataset, config.data_root, config.out_dir)
        identity["dataset_files"] = files
    if identity:
        stored["inputs"] = _plain(identity)
    return stored


def _experiment_content(path: str) -> dict[str, Any]:
    """What of an experiment file makes its runs: factories, their options and the tasks."""
    from taskbalance.data.experiment import parse_experiment_file

    file = parse_experiment_file(path)
    keys = ("model", "model_options", "data", "data_options", "tasks")
    return {key: getattr(file, key) for key in keys}


def _given_data(inputs: RunInputs) -> bool:
    return inputs.benchmark is not None or inputs.loaders is not None


def _say(log: Log | None, line: str) -> None:
    if log is not None:
        log(line)


def _as_config(config: TrainConfig | Mapping[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, (str, Path)):
        return TrainConfig.from_yaml(config)
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig, a dict or a YAML path, got {type(config)!r}"
        )
    return config


def _benchmark(config: TrainConfig, inputs: RunInputs) -> Any:
    """The run's data: the handed-over benchmark (pseudo-labels filled in) or the config's
    data source (:func:`~taskbalance.training.sources.load_data`); ``None`` when loaders and
    tasks are handed over instead."""
    bench = inputs.benchmark
    if bench is None:
        if inputs.loaders is not None and inputs.tasks is not None:
            return None
        return load_data(config)
    if config.pseudo_labels is not None:
        from taskbalance.data.pseudo_labels import with_pseudo_labels

        bench = with_pseudo_labels(bench, config.pseudo_labels)
    return bench


def _tasks(config: TrainConfig, inputs: RunInputs, bench: Any) -> list[Any]:
    """The evaluated tasks: handed over, or the benchmark's named by ``config.tasks``."""
    available = list(inputs.tasks) if inputs.tasks is not None else list(bench.tasks)
    if inputs.model is None and bench is None:
        raise ValueError("a run handed loaders and tasks needs a model too (RunInputs.model)")
    by_name = {t.name: t for t in available}
    names = config.tasks if config.tasks is not None else list(by_name)
    unknown = [n for n in [*names, *(config.trainable_tasks or [])] if n not in by_name]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the run's tasks are {list(by_name)}")
    return [by_name[n] for n in names]


def _method(config: TrainConfig, num_tasks: int) -> Any:
    try:
        return create(config.method, num_tasks, **config.method_options)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in config.method_options.items())
        raise ValueError(
            f"method {config.method!r} with options {given or 'none'}: {err}"
        ) from None


def _check_sampling(config: TrainConfig, method: Any, model: nn.Module, group: bool) -> None:
    """A double-sampling method refused before training, with the fix named as a method option
    of the config and the command line (see :func:`double_sampling_problem`)."""
    if getattr(method, "independent_batches", 1) == 1:
        return
    mode = choose_mode(config.mode, method, model)
    problem = double_sampling_problem(config, method, mode, group)
    if problem is not None:
        raise single_sampling_error(method.name, problem, command="train")


def check_method(config: TrainConfig, distributed: bool) -> None:
    """What :func:`run` checks of ``config``'s method that needs no data and no model: it is
    created from ``config.method_options``, and can sample as the run asks ``distributed`` or
    not (:func:`double_sampling_problem`, in the mode planned without the model).
    ``taskbalance train --nproc N`` runs it before starting torchrun, so bad input is refused
    once, not by every rank."""
    names = config.trainable_tasks or config.tasks or [t.name for t in data_tasks(config)]
    method = _method(config, len(names))
    mode = choose_mode(config.mode, method, None)
    problem = double_sampling_problem(config, method, mode, distributed)
    if problem is not None:
        raise single_sampling_error(method.name, problem, command="train")


def double_sampling_problem(
    config: TrainConfig, method: Any, mode: str, distributed: bool
) -> str | None:
    """Why ``method`` (created from ``config``) cannot sample three independent sub-batches a
    step in a run of ``config`` in balancer ``mode`` (``"param"``/``"rep"``), ``distributed``
    or not: rep mode or a distributed step (the Balancer would refuse it naming the Python
    fix), or partial labels (``labels`` below 1, no pseudo-labels filling them: the parts of a
    batch label different tasks, and the run would stop at the first such batch). ``None``:
    it can, or it samples once. The problem is for :func:`single_sampling_error`."""
    if getattr(method, "independent_batches", 1) == 1:
        return None
    where = independent_setup_conflict(method, mode, "jacobian", distributed)
    partial = sorted(t for t, f in (config.labels or {}).items() if f < 1)
    if where is not None:
        return f"is not supported in {where}"
    if partial and not config.pseudo_labels:
        return (
            "needs every part of a batch to label the same tasks; with partial labels of "
            f"{partial} they differ from batch to batch"
        )
    return None


def _trainer_options(config: TrainConfig) -> dict[str, Any]:
    """The Trainer's keyword arguments that come straight from the config."""
    keys = (
        "epochs", "steps", "mode", "optimizer", "lr", "weight_decay", "optimizer_options",
        "scheduler", "scheduler_options", "grad_clip", "amp", "amp_dtype", "progress",
        "tensorboard", "save_best", "final_epochs", "affinity", "nonfinite",
    )
    return {key: getattr(config, key) for key in keys}
