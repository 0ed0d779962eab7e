"""Training from a config: :func:`train` builds the data (a built-in benchmark or a real dataset),
model, method and :class:`~taskbalance.training.Trainer` from a :class:`TrainConfig` and fits it
(resumably)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from taskbalance.balancing import create

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig
from .devices import resolve_device, seed_everything
from .loaders import make_loaders
from .results import RunResult
from .rundir import check_new_run
from .sources import load_data
from .trainer import Callback, Trainer

__all__ = ["train"]


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

    A new run (``resume`` false) in a folder holding another run's results is refused
    (:class:`~taskbalance.training.rundir.RunFolderError`, a ``ValueError``) unless
    ``overwrite``, which deletes that run's files first.
    """
    config = _as_config(config)
    device = resolve_device(config.device)  # fail before generating data
    out_dir = Path(config.out_dir)
    check_new_run(out_dir, resume=config.resume, overwrite=overwrite)
    if config.resume and not (out_dir / CHECKPOINT_NAME).is_file():
        load_checkpoint(out_dir / CHECKPOINT_NAME)  # raises the explanatory FileNotFoundError
    bench = _benchmark(config)
    all_tasks = {t.name: t for t in bench.tasks}
    names = config.tasks if config.tasks is not None else list(all_tasks)
    tasks = [all_tasks[n] for n in names]
    seed_everything(config.seed)
    model = bench.build_model(**config.model_options)
    method = _method(config, len(tasks))
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
        device=device,
        out_dir=out_dir,
        run_config=config.to_dict(),
        loader_generator=train_loader.generator,
        callbacks=callbacks,
        **_trainer_options(config),
    )
    import yaml

    trainer.start_files["config.yaml"] = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return trainer.fit(resume=config.resume)


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


def _benchmark(config: TrainConfig) -> Any:
    """The config's data source (:func:`~taskbalance.training.sources.load_data`)."""
    return load_data(config)


def _method(config: TrainConfig, num_tasks: int) -> Any:
    try:
        return create(config.method, num_tasks, **config.method_options)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in config.method_options.items())
        raise ValueError(
            f"method {config.method!r} with options {given or 'none'}: {err}"
        ) from None


def _trainer_options(config: TrainConfig) -> dict[str, Any]:
    """The Trainer's keyword arguments that come straight from the config."""
    keys = (
        "epochs", "steps", "mode", "optimizer", "lr", "weight_decay", "optimizer_options",
        "scheduler", "scheduler_options", "grad_clip", "amp", "amp_dtype", "progress",
        "tensorboard", "save_best", "final_epochs",
    )
    return {key: getattr(config, key) for key in keys}
