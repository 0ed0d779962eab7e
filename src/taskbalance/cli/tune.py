"""taskbalance tune: an Optuna search of static task weights."""

from __future__ import annotations

import argparse
from typing import Any

from taskbalance.cli._common import (
    add_data_flags,
    add_recipe_flag,
    add_training_flags,
    data_name,
    data_settings,
    explicit_dests,
    log,
    out_folder,
    positive_int,
    recipe_settings,
    refuse_benchmark_flags,
    require_data,
)

# What tune writes in its --out folder (deleted by --overwrite).
_TUNE_FILES = ("baselines", "trials", "tune.db", "best_weights.json")


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``tune`` command and its flags."""
    p = sub.add_parser(
        "tune",
        help="tune static task weights with Optuna",
        description="Optuna search of static task weights (log-uniform per task, normalised to "
        "sum to the number of tasks) minimising validation Δm% against single-task baselines "
        "(trained once, cached in the output folder). The study is stored (default "
        "sqlite:///OUT/tune.db), so calling tune again continues it.",
    )
    p.add_argument("--benchmark", default=None, help="benchmark name (or --dataset)")
    add_data_flags(p)
    p.add_argument(
        "--trials",
        type=positive_int,
        default=20,
        help="finished trials the study should have; a rerun adds only the missing "
        "ones (a trial of NaN metrics fails and is missing) (default: %(default)s)",
    )
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/tune.db)"
    )
    p.add_argument("--study", default=None, help="study name (default: <benchmark>-static-weights)")
    p.add_argument("--seed", type=int, default=0, help="training and sampler seed (default: 0)")
    add_training_flags(
        p, defaults=defaults, out_help="output folder (default: runs/tune-<benchmark>)"
    )
    add_recipe_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskbalance.experiments.tune import TuneSettings, run_tune

    require_data(args)
    refuse_benchmark_flags(
        explicit_dests(args, add_command),
        dataset=args.dataset, experiment=args.experiment, recipe=args.recipe,
    )  # fmt: skip
    out_dir = out_folder(args, f"tune-{data_name(args)}", _TUNE_FILES, "study")
    settings = TuneSettings(
        benchmark=args.benchmark,
        **data_settings(args),
        trials=args.trials,
        storage=args.storage,
        study=args.study,
        epochs=args.epochs,
        steps=args.steps,
        size=args.size,
        device=args.device,
        seed=args.seed,
        out_dir=str(out_dir),
        overwrite=args.overwrite,
        lr=args.lr,
        batch_size=args.batch_size,
    )
    if args.recipe is not None:
        settings = _recipe_settings(args, settings)
    result = run_tune(settings, log=log)
    weights = ", ".join(f"{t}={w:.4f}" for t, w in result.best_weights.items())
    print(f"study {result.study_name!r} ({result.storage}): {result.trials} finished trials")
    print(f"best validation Δm%: {result.best_value:+.2f}  weights: {weights}")
    print("train with them:")
    print(f"  {result.command}")
    return 0


# tune flags (argparse dests) -> TuneSettings fields a recipe sets unless the flag is given; the
# rest of the recipe (model, optimizer, schedule, final_epochs, ...) goes to ``extra``
_RECIPE_SETTINGS = ("epochs", "device", "lr", "batch_size")


def _recipe_settings(args: argparse.Namespace, settings: Any) -> Any:
    """``settings`` with recipe ``args.recipe`` applied under the flags given explicitly.

    A recipe that validates on the test split (``val_fraction: 0``, as the published tables
    do) would tune the weights on the test split: tune holds out the dataset's default
    fraction of the training folder instead, unless ``--dataset-option val_fraction=...`` is
    given."""
    import dataclasses

    from taskbalance.data.registry import HOLDOUT_OPTIONS

    fields, extra = recipe_settings(args, settings, _RECIPE_SETTINGS, add_command)
    options = dict(fields["dataset_options"] or {})
    given = {key for key, _ in args.dataset_option or ()}
    if options.get("val_fraction") == 0 and "val_fraction" not in given:
        options["val_fraction"] = HOLDOUT_OPTIONS["val_fraction"]
        log(
            f"tune --recipe {args.recipe}: validating on a held-out "
            f"{options['val_fraction']:g} of the training folder, not on the test split the "
            "recipe validates on (give --dataset-option val_fraction=0 for the recipe's)"
        )
    fields["dataset_options"] = options
    fields["command_dataset_options"] = {k: v for k, v in options.items() if k in given}
    return dataclasses.replace(settings, **fields, extra=extra, recipe=args.recipe)
