"""taskbalance train: one run, or one network per task group (--groups)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taskbalance.cli._common import (
    DEVICE_HELP,
    UserError,
    add_data_flags,
    add_nproc_flag,
    add_recipe_flag,
    add_threads_flag,
    check_out,
    experiment_name,
    key_value,
    log,
    one_line,
    positive_int,
    refuse_benchmark_flags,
)


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``train`` command and its flags."""
    from taskbalance.experiments.workflows import labels_argument

    p = sub.add_parser(
        "train",
        help="train one run",
        description="Train one run; its folder ends with results.json. A YAML --config can give "
        "every TrainConfig key; flags override it.",
    )
    p.add_argument("--config", help="YAML file of TrainConfig keys (flags override it)")
    p.add_argument("--benchmark", help="benchmark name (default: multidigits)")
    add_data_flags(p)
    add_recipe_flag(p)
    p.add_argument("--method", help="balancing method (see 'taskbalance methods'; default: ew)")
    p.add_argument("--epochs", type=positive_int)
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=positive_int, help="cap on training steps per epoch")
    steps.add_argument(
        "--all-steps",
        dest="steps_all",
        action="store_true",
        help="no cap on steps per epoch (overrides 'steps' in --config)",
    )
    p.add_argument("--out", help="run folder (default: runs/<benchmark>-<method>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument(
        "--affinity",
        action="store_true",
        help="also log per-epoch TAG task affinity to history/TensorBoard (gradient methods)",
    )
    p.add_argument(
        "--nonfinite",
        choices=["raise", "skip"],
        help="a step whose task gradient holds NaN or Inf: stop with an error (raise, the "
        "default) or warn and skip it without an update, counted in the history (skip)",
    )
    add_nproc_flag(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the files of an earlier run in the --out folder and start afresh (without "
        "it, a folder holding another run's results is refused)",
    )
    add_threads_flag(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--size", choices=("tiny", "default"), help="benchmark size")
    p.add_argument(
        "--option",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="method option, repeatable (values read as YAML; a,b,c is a list), "
        "e.g. --option weights=0.7,1.3",
    )
    p.add_argument(
        "--labels",
        type=labels_argument,
        metavar="TASK=FRACTION,...",
        help="keep each task's labels on this fraction of the training samples, e.g. depth=0.2",
    )
    p.add_argument(
        "--pseudo-labels",
        metavar="PATH",
        help="pseudo_labels.pt written by 'taskbalance annotate' (fills missing labels)",
    )
    _add_group_flags(p)
    p.set_defaults(func=run, check_launch=check_launch)


def _add_group_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--groups", metavar="'a,b;c'",
        help="train one network per task group (';' between groups, ',' inside one: hard "
        "sharing inside a group) into --out/<tasks>/ and report the combination: metrics, "
        "parameters and step time against one shared network (groups.md, groups.json)",
    )  # fmt: skip
    p.add_argument(
        "--baselines", metavar="DIR",
        help="with --groups: single-task runs for Δm%%, DIR/<task>/seed<seed>/results.json "
        "(compare's baselines folder) or DIR/<task>/results.json",
    )  # fmt: skip
    p.add_argument(
        "--shared", action="store_true",
        help="with --groups: also train one network shared by all the grouped tasks "
        "(--out/shared/) and report it beside the groups",
    )  # fmt: skip


# flag (argparse dest) -> TrainConfig key
_TRAIN_FLAGS = {
    "benchmark": "benchmark",
    "nonfinite": "nonfinite",
    "method": "method",
    "epochs": "epochs",
    "steps": "steps",
    "out": "out_dir",
    "seed": "seed",
    "device": "device",
    "lr": "lr",
    "batch_size": "batch_size",
    "size": "size",
    "labels": "labels",
    "pseudo_labels": "pseudo_labels",
    "dataset": "dataset",
    "data_root": "data_root",
    "experiment": "experiment",
}


def _train_config_dict(args: argparse.Namespace) -> dict[str, Any]:
    from taskbalance.training.config import read_config_file

    data: dict[str, Any] = {}
    if args.config is not None:
        data.update(read_config_file(args.config))
    for flag, key in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    if args.steps_all:
        data["steps"] = None
    if args.resume:
        data["resume"] = True
    if args.affinity:
        data["affinity"] = True
    if args.option:
        options = data.get("method_options") or {}
        if not isinstance(options, dict):
            raise UserError(f"config key 'method_options' must be a mapping, got {options!r}")
        data["method_options"] = {**options, **dict(args.option)}
    if args.dataset_option:
        options = data.get("dataset_options") or {}
        if not isinstance(options, dict):
            raise UserError(f"config key 'dataset_options' must be a mapping, got {options!r}")
        data["dataset_options"] = {**options, **dict(args.dataset_option)}
    if args.recipe is not None:
        from taskbalance.training.recipes import recipe_config

        data = recipe_config(args.recipe, data)
    refuse_benchmark_flags(
        {dest for dest in ("benchmark", "size") if getattr(args, dest) is not None},
        dataset=data.get("dataset"), experiment=data.get("experiment"), recipe=args.recipe,
    )  # fmt: skip
    if "out_dir" not in data:
        bench = (
            experiment_name(data["experiment"])
            if data.get("experiment")
            else data.get("dataset") or data.get("benchmark", "multidigits")
        )
        method = data.get("method", "ew")
        data["out_dir"] = str(Path("runs") / f"{bench}-{method}-seed{data.get('seed', 0)}")
    return data


def run(args: argparse.Namespace) -> int:
    from taskbalance.training import train

    if args.groups is not None:
        return _train_groups(args)
    if args.baselines is not None or args.shared:
        raise UserError("--baselines and --shared go with --groups")
    config = _train_config(args)
    _check_run_folder(args, config.out_dir)
    if config.pseudo_labels is not None:
        _check_pseudo_labels(
            config.pseudo_labels,
            "--pseudo-labels" if args.pseudo_labels is not None else "config key 'pseudo_labels'",
        )
    result = train(config, overwrite=args.overwrite)
    out = Path(result.out_dir or config.out_dir)
    print(f"best epoch (validation): {result.best_epoch}")
    for task, metrics in (result.test or {}).items():
        shown = ", ".join(f"{m} {v:.4f}" for m, v in metrics.items())
        print(f"  test {task}: {shown}")
    print(f"results: {out / 'results.json'}")
    return 0


def check_launch(args: argparse.Namespace) -> None:
    """``--nproc N``: what the ranks would refuse before training (the config, the method and
    its options, its sampling over several processes), refused before torchrun starts."""
    from taskbalance.training.runner import check_method

    if args.groups is not None or args.baselines is not None or args.shared:
        return  # the ranks refuse or train these (each group's run checked there)
    check_method(_train_config(args), distributed=True)


def _train_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of train's flags and --config (a run folder required)."""
    from taskbalance.training import TrainConfig

    config = TrainConfig.from_dict(_train_config_dict(args))
    if config.out_dir is None:
        raise UserError("config key 'out_dir' is null: taskbalance train needs a run folder")
    return config


def _train_groups(args: argparse.Namespace) -> int:
    from taskbalance.experiments.grouped import parse_groups, train_groups, write_grouped_report

    data = _train_config_dict(args)
    if args.out is None and args.config is None:  # the default folder, marked as groups
        data["out_dir"] += "-groups"
    _check_run_folder(args, data["out_dir"])
    result = train_groups(
        data, parse_groups(args.groups), baselines=args.baselines, shared=args.shared,
        overwrite=args.overwrite, log=log,
    )  # fmt: skip
    report = write_grouped_report(result)
    print(report.read_text(encoding="utf-8"), end="")
    print(f"report: {report}")
    return 0


def _check_pseudo_labels(path: str, option: str) -> None:
    from taskbalance.data.pseudo_labels import PseudoLabelStore

    try:
        PseudoLabelStore.load(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{option}: {one_line(err)}") from None


def _check_run_folder(args: argparse.Namespace, path: str) -> None:
    check_out(path, "--out" if args.out is not None else "config key 'out_dir'")
