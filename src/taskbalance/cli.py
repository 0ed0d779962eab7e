"""The ``taskbalance`` command line.

::

    taskbalance methods                                   list balancing methods
    taskbalance train --benchmark B --method M ...        one training run
    taskbalance train --dataset D --data-root DIR ...     ... on a real dataset (docs/datasets.md)
    taskbalance compare --experiment FILE ...             ... on your own model and data
                                                          (docs/experiments.md)
    taskbalance compare [--methods all|m1,m2] ...         leaderboard + plots of several methods
    taskbalance tune --benchmark B [--trials N] ...       Optuna search of static task weights
    taskbalance diagnose --benchmark B [--steps N] ...    task conflicts, affinity, grouping

User errors (unknown names, bad values, config typos) print one line to stderr and exit with
status 2. Set ``TASKBALANCE_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]

EXIT_USER_ERROR = 2
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
EXIT_INTERRUPTED = 130
#: The default thread count never exceeds this: the built-in benchmarks' small networks gain
#: little from more threads, and a busy machine loses a lot from oversubscription.
MAX_DEFAULT_THREADS = 4


class UserError(Exception):
    """An error caused by the command line or config (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage is in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------- arg types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _steps(text: str) -> int | None:
    if text.strip().lower() in ("all", "none"):
        return None
    return _positive_int(text)


def _seeds(text: str) -> list[int]:
    """``N`` -> seeds 0..N-1; ``a,b,c`` -> exactly those seeds."""
    try:
        if "," in text:
            seeds = [int(p) for p in text.split(",") if p.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count N (seeds 0..N-1) or a list like 0,1,2, got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected a count >= 1 or distinct non-negative seeds, got {text!r}"
        )
    return seeds


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _option(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as YAML, ``a,b,c`` (no brackets) as a list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    raw = raw.strip()
    if "," in raw and not raw.startswith(("[", "{", '"', "'")):
        return key, [_parse_value(part.strip()) for part in raw.split(",")]
    return key, _parse_value(raw)


# ---------------------------------------------------------------------------------- commands
def _cmd_recipes(args: argparse.Namespace) -> int:
    from taskbalance.training.recipes import RECIPES, available_recipes

    for name in available_recipes():
        recipe = RECIPES[name]
        print(f"{name}  (dataset {recipe.dataset})")
        print(f"  model:     {recipe.model}")
        print(f"  protocol:  {recipe.summary()}")
        print(f"  source:    {recipe.source}")
        if recipe.published:
            labels = ", ".join(row.label for row in recipe.published)
            print(f"  published: {len(recipe.published)} rows ({labels}); --verbose shows them")
        if args.verbose:
            for row in recipe.published:
                cells = ", ".join(
                    f"{t} {m} {v:.4g}" for t, ms in row.metrics.items() for m, v in ms.items()
                )
                print(f"  published: {row.label}: {cells} ({row.source})")
            for checked in dict.fromkeys(row.checked for row in recipe.published):
                print(f"  read:      {checked}")
            print(f"  code:      {recipe.code}")
            for note in recipe.notes:
                print(f"  note:      {note}")
    print("use: taskbalance compare|train --recipe NAME --data-root DIR (flags override it)")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    import taskbalance

    infos = [taskbalance.method_info(name) for name in taskbalance.available_methods()]
    width = max([len("method")] + [len(i.name) for i in infos])
    print(f"{'method':<{width}}  {'kind':<8}  paper")
    for info in infos:
        print(f"{info.name:<{width}}  {info.kind:<8}  {info.paper or '-'}")
        if args.verbose:
            if info.summary:
                print(f"{'':<{width}}  {'':<8}  {info.summary}")
            print(f"{'':<{width}}  {'':<8}  options: {', '.join(info.options) or 'none'}")
    return 0


# flag (argparse dest) -> TrainConfig key
_TRAIN_FLAGS = {
    "benchmark": "benchmark",
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
    if "out_dir" not in data:
        bench = (
            _experiment_name(data["experiment"])
            if data.get("experiment")
            else data.get("dataset") or data.get("benchmark", "multidigits")
        )
        method = data.get("method", "ew")
        data["out_dir"] = str(Path("runs") / f"{bench}-{method}-seed{data.get('seed', 0)}")
    return data


def _cmd_train(args: argparse.Namespace) -> int:
    from taskbalance.training import TrainConfig, train

    if args.groups is not None:
        return _train_groups(args)
    if args.baselines is not None or args.shared:
        raise UserError("--baselines and --shared go with --groups")
    config = TrainConfig.from_dict(_train_config_dict(args))
    if config.out_dir is None:
        raise UserError("config key 'out_dir' is null: taskbalance train needs a run folder")
    _check_out(config.out_dir, "--out" if args.out is not None else "config key 'out_dir'")
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


def _train_groups(args: argparse.Namespace) -> int:
    from taskbalance.experiments.grouped import parse_groups, train_groups, write_grouped_report

    data = _train_config_dict(args)
    if data.get("experiment") is not None:
        raise UserError("--groups trains on the built-in benchmarks; remove --experiment")
    if args.out is None and args.config is None:  # the default folder, marked as groups
        data["out_dir"] += "-groups"
    _check_out(data["out_dir"], "--out" if args.out is not None else "config key 'out_dir'")
    result = train_groups(
        data, parse_groups(args.groups), baselines=args.baselines, shared=args.shared,
        overwrite=args.overwrite, log=_log,
    )  # fmt: skip
    report = write_grouped_report(result)
    print(report.read_text(encoding="utf-8"), end="")
    print(f"report: {report}")
    return 0


# What each command writes in its --out folder (deleted by --overwrite).
_COMPARE_FILES = ("runs", "baselines", "plots", "leaderboard.md", "results.json")
_WORKFLOW_FILES = ("runs", "teachers", "pseudo_labels.pt", "annotate.json", "workflows.md",
                   "results.json")
_TUNE_FILES = ("baselines", "trials", "tune.db", "best_weights.json")
_ANNOTATE_FILES = ("teachers", "pseudo_labels.pt", "annotate.json")


def _check_out(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` if the command can write its folder there (nothing is created yet), else a
    ``UserError`` naming ``option``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {str(out)!r} is a file; give a folder for the results")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{option} {str(out)!r}: {str(existing)!r} is a file, so the folder cannot be "
            "created; give another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{option} {str(out)!r}: {str(existing)!r} is not writable; give a folder you can "
            "write to"
        )
    return out


def _prepare_out(out: Path, names: Sequence[str], overwrite: bool, what: str) -> None:
    """Delete temporary files a killed call left in ``out``; with ``--overwrite``, also what an
    earlier ``what`` wrote there (``names`` only)."""
    from taskbalance.fileio import remove_stale_temporaries
    from taskbalance.training.distributed_run import in_process_group, on_rank0
    from taskbalance.training.rundir import clear_run, held_results

    def prepare() -> None:
        remove_stale_temporaries(out)  # left by a call killed while writing its report
        if overwrite and held_results(out, names):
            removed = clear_run(out, names)
            _log(f"--overwrite: removed the earlier {what} from {out} ({', '.join(removed)})")

    if in_process_group():  # under torchrun rank 0 alone reads and writes --out
        on_rank0(prepare, f"preparing {out}")
    else:
        prepare()


def _check_pseudo_labels(path: str, option: str) -> None:
    from taskbalance.data.pseudo_labels import PseudoLabelStore

    try:
        PseudoLabelStore.load(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{option}: {_one_line(err)}") from None


def _cmd_compare(args: argparse.Namespace) -> int:
    from taskbalance.experiments.compare import run_compare

    if args.labels is not None or args.workflows is not None:
        if args.dataset is not None or args.experiment is not None:
            flag = "--dataset" if args.dataset is not None else "--experiment"
            raise UserError(
                f"--labels workflows run on the built-in benchmarks; remove {flag} or --labels"
            )
        if "WORLD_SIZE" in os.environ:
            raise UserError(
                "compare --labels/--workflows does not run under torchrun; run it in one "
                "process (the method comparison runs under torchrun)"
            )
        return _compare_workflows(args)
    out_dir = _check_out(args.out or Path("runs") / f"compare-{_data_name(args)}", "--out")
    _prepare_out(out_dir, _COMPARE_FILES, args.overwrite, "comparison")
    if args.finetune_rounds:
        raise UserError(
            "--finetune-rounds applies to the partial-label workflows: give --labels TASK=FRACTION"
        )
    settings = _compare_settings(args, out_dir)
    result = run_compare(settings, log=_log)
    print()
    print(result.markdown, end="")
    print()
    print(f"report:  {result.out_dir / 'leaderboard.md'}")
    print(f"results: {result.out_dir / 'results.json'}")
    for name, path in result.plots.items():
        print(f"plot {name}: {path}")
    print(f"took {result.seconds:.1f}s")
    return 0


def _compare_settings(args: argparse.Namespace, out_dir: Path) -> Any:
    """The :class:`CompareSettings` of compare's flags (a recipe applied under them)."""
    from taskbalance.experiments.compare import DEFAULT_SCHEDULER, DEFAULT_SEEDS, CompareSettings

    settings = CompareSettings(
        benchmark=args.benchmark,
        **_data_settings(args),
        methods=args.methods,
        seeds=args.seeds if args.seeds is not None else list(DEFAULT_SEEDS),
        epochs=args.epochs,
        steps=args.steps,
        scheduler=args.scheduler or DEFAULT_SCHEDULER,
        size=args.size,
        device=args.device,
        out_dir=str(out_dir),
        lr=args.lr,
        batch_size=args.batch_size,
        pareto=args.pareto,
        jobs=args.jobs,
        timing=not args.no_timing,
    )
    if args.recipe is not None:
        settings = _recipe_settings(args, settings)
    return settings


def _data_name(args: argparse.Namespace) -> str:
    if args.experiment is not None:
        return _experiment_name(args.experiment)
    return str(getattr(args, "recipe", None) or args.dataset or args.benchmark)


# compare flag (argparse dest) -> CompareSettings field a recipe sets unless the flag is given
_RECIPE_SETTINGS = ("epochs", "steps", "device", "lr", "batch_size", "scheduler", "seeds")


def _recipe_settings(args: argparse.Namespace, settings: Any) -> Any:
    """``settings`` with recipe ``args.recipe`` applied under the flags given explicitly."""
    import dataclasses

    from taskbalance.training.recipes import get_recipe, recipe_config

    if getattr(settings, "experiment", None) is not None:
        raise UserError("--recipe sets a published dataset and model; drop --experiment or it")
    given = _explicit_dests(args)
    explicit = {k: getattr(settings, k) for k in _RECIPE_SETTINGS if k in given}
    explicit.pop("seeds", None)
    for key in ("dataset", "data_root", "dataset_options"):
        if getattr(settings, key) is not None:
            explicit[key] = getattr(settings, key)
    cfg = recipe_config(args.recipe, explicit)
    fields = {k: cfg.pop(k, None) for k in ("dataset", "data_root", "dataset_options")}
    fields.update({k: cfg.pop(k) for k in ("epochs", "device", "lr", "batch_size", "scheduler")})
    fields["steps"] = cfg.pop("steps", None)  # whole epochs unless --steps
    if "seeds" not in given:
        fields["seeds"] = list(get_recipe(args.recipe).seeds)
    extra = {**settings.extra, **cfg}
    return dataclasses.replace(settings, **fields, extra=extra, recipe=args.recipe)


def _explicit_dests(args: argparse.Namespace) -> set[str]:
    """The flags (argparse dests) given on the command line, found by parsing it again with
    every default suppressed."""
    parser = _build_parser()
    parsers = [parser, *parser._subparsers._group_actions[0].choices.values()]  # type: ignore[union-attr]
    for p in parsers:
        p._defaults.clear()
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(args.argv))) - {"command"}


def _experiment_name(path: str) -> str:
    from taskbalance.data.experiment import parse_experiment_file

    return parse_experiment_file(path).name


def _data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``dataset``, ``data_root``, ``dataset_options`` and ``experiment`` of compare's and
    tune's settings."""
    has_data = args.dataset is not None or getattr(args, "recipe", None) is not None
    if not has_data and (args.data_root is not None or args.dataset_option):
        flag = "--data-root" if args.data_root is not None else "--dataset-option"
        raise UserError(f"{flag} applies to a real dataset: give --dataset NAME too")
    if args.experiment is not None and args.dataset is not None:
        raise UserError("give --dataset or --experiment, not both: a run trains on one")
    return {
        "experiment": args.experiment,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "dataset_options": dict(args.dataset_option) if args.dataset_option else None,
    }


def _require_data(args: argparse.Namespace) -> None:
    """Exactly one of ``--benchmark``, ``--dataset`` and ``--experiment`` (tune, diagnose)."""
    flags = {"--benchmark": args.benchmark, "--dataset": args.dataset,
             "--experiment": args.experiment}  # fmt: skip
    given = [flag for flag, value in flags.items() if value is not None]
    if len(given) != 1:
        said = {0: "neither given", 2: "both {} and {} given"}.get(len(given), "all three given")
        raise UserError(
            "give --benchmark NAME, --dataset NAME --data-root DIR or --experiment FILE "
            f"({said.format(*given)})"
        )
    if args.benchmark is None:
        from taskbalance.training.config import DEFAULT_BENCHMARK

        args.benchmark = DEFAULT_BENCHMARK


def _optional_training_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.lr is not None:
        options["lr"] = args.lr
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    return options


def _compare_workflows(args: argparse.Namespace) -> int:
    from taskbalance.experiments.workflows import WORKFLOWS, compare_workflows

    if args.labels is None:
        raise UserError("--workflows compares partial-label workflows: give --labels TASK=FRACTION")
    # Flags of the method comparison that the workflow comparison has no use for are refused
    # rather than silently ignored.
    if args.pareto is not None:
        raise UserError("--pareto applies to the method comparison, not to --labels workflows")
    for flag, value in (
        ("--scheduler", args.scheduler),
        ("--jobs", args.jobs),
        ("--no-timing", args.no_timing or None),
    ):
        if value is not None:
            raise UserError(f"{flag} applies to the method comparison, not to --labels workflows")
    if args.seeds is None:
        args.seeds = [0]
    if len(args.seeds) != 1:
        raise UserError(
            f"--labels workflows run one seed; give --seeds with one value (got {args.seeds})"
        )
    method = "ew"
    if args.methods is not None:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        if len(names) != 1 or names[0] == "all":
            raise UserError(
                "--labels workflows train with one balancing method; give --methods with one "
                f"name (got {args.methods!r})"
            )
        method = names[0]
    out_dir = _check_out(args.out or Path("runs") / f"workflows-{args.benchmark}", "--out")
    _prepare_out(out_dir, _WORKFLOW_FILES, args.overwrite, "workflow comparison")
    # An earlier call with the same settings is continued: each run resumes from its
    # checkpoint; a run of other settings is refused (the message names --overwrite).
    result = compare_workflows(
        args.benchmark,
        args.labels,
        args.workflows or WORKFLOWS,
        epochs=args.epochs,
        steps=args.steps,
        seed=args.seeds[0],
        method=method,
        size=args.size,
        device=args.device,
        out_dir=str(out_dir),
        finetune_rounds=args.finetune_rounds,
        log=_log,
        **_optional_training_options(args),
    )
    print()
    print(result.markdown, end="")
    print()
    if result.out_dir is not None:
        print(f"report:  {result.out_dir / 'workflows.md'}")
    return 0


def _cmd_annotate(args: argparse.Namespace) -> int:
    from taskbalance.experiments.annotate import STORE_NAME, annotate_benchmark, format_summary

    out = str(_check_out(args.out or Path("runs") / f"annotate-{args.benchmark}", "--out"))
    _prepare_out(Path(out), _ANNOTATE_FILES, args.overwrite, "annotation")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    store = annotate_benchmark(
        args.benchmark,
        args.labels,
        tasks,
        seed=args.seed,
        size=args.size,
        out_dir=out,
        teacher_width=args.teacher_width,
        epochs=args.epochs,
        steps=args.steps,
        threshold=args.threshold,
        device=args.device,
        log=_log,
        **_optional_training_options(args),
    )
    print(format_summary(store))
    path = Path(out) / STORE_NAME
    print(f"pseudo-labels: {path}")
    print(
        f"train with them: taskbalance train --benchmark {args.benchmark} --labels "
        f"{','.join(f'{k}={v:g}' for k, v in args.labels.items())} --pseudo-labels {path}"
        + (f" --size {args.size}" if args.size != "default" else "")
        + (f" --seed {args.seed}" if args.seed else "")
    )
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from taskbalance.experiments.tune import TuneSettings, run_tune

    _require_data(args)
    out_dir = _check_out(args.out or Path("runs") / f"tune-{_data_name(args)}", "--out")
    _prepare_out(out_dir, _TUNE_FILES, args.overwrite, "study")
    settings = TuneSettings(
        benchmark=args.benchmark,
        **_data_settings(args),
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
    result = run_tune(settings, log=_log)
    weights = ", ".join(f"{t}={w:.4f}" for t, w in result.best_weights.items())
    print(f"study {result.study_name!r} ({result.storage}): {result.trials} finished trials")
    print(f"best validation Δm%: {result.best_value:+.2f}  weights: {weights}")
    print("train with them:")
    print(f"  {result.command}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from taskbalance.experiments.diagnose import run_diagnose, write_report

    _require_data(args)
    settings = _data_settings(args)
    if settings["dataset_options"] is not None:
        raise UserError(
            "diagnose reads a dataset with its default options; remove --dataset-option"
        )
    if settings["experiment"] is not None and args.size != "default":
        raise UserError("--size applies to the built-in benchmarks; an experiment's data_options "
                        "set its data's size")  # fmt: skip
    name = _data_name(args)
    out_dir = _check_out(args.out or Path("runs") / f"diagnose-{name}", "--out")
    _log(f"diagnose: {args.steps} equal-weights steps on {name}")
    result = run_diagnose(
        args.benchmark,
        dataset=settings["dataset"],
        data_root=settings["data_root"],
        experiment=settings["experiment"],
        steps=args.steps,
        seed=args.seed,
        size=args.size,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
    )
    summary = write_report(result, out_dir, name)
    print(f"summary: {summary}")
    return 0


def _log(message: str) -> None:
    print(message, flush=True)


def default_threads() -> tuple[int, str]:
    """The default torch thread count and why: the usable CPUs minus those busy with other work
    (1-minute load average), between 1 and :data:`MAX_DEFAULT_THREADS`.

    Measured (``benchmarks/bench_threads.py``, 2 CPUs): idle, 2 threads take 0.57x the time of
    one; with two other busy processes, 2 threads take 3.7x the time of one (oversubscription).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    free = cpus - round(load)
    threads = max(1, min(MAX_DEFAULT_THREADS, free))
    return threads, f"{cpus} CPUs, load {load:.1f}"


def _set_threads(requested: int | None) -> None:
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
        _log(f"torch threads: {requested} (--threads)")
        return
    threads, why = default_threads()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:  # torchrun's processes on this machine share its CPUs
        threads, why = max(1, threads // local), f"{why}, {local} processes"
    torch.set_num_threads(threads)
    _log(f"torch threads: {threads} ({why}; --threads N to change)")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of the command line are one line each (no source excerpt)."""
    text = " ".join(str(message).split())
    print(f"taskbalance: warning: {text}", file=file or sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- parser
def _add_training_flags(
    p: argparse.ArgumentParser, *, defaults: dict[str, Any], out_help: str
) -> None:
    """Flags shared by compare and tune (train has its own: its defaults come from the config)."""
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=defaults["epochs"],
        help="epochs per run (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=_steps,
        default=defaults["steps"],
        help="cap on training steps per epoch, or 'all' (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        choices=("tiny", "default"),
        default=defaults["size"],
        help="benchmark size (default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: cpu)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the trainer's)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="training batch size (default: the trainer's)",
    )
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what an earlier call wrote to the --out folder, then start afresh "
        "(without it, a call continues an earlier one with the same settings)",
    )
    _add_threads_flag(p)


def _add_data_flags(p: argparse.ArgumentParser, *, options: bool = True) -> None:
    """``--dataset NAME --data-root DIR [--dataset-option KEY=VALUE]``: a real dataset."""
    p.add_argument(
        "--dataset",
        default=None,
        help="a real dataset instead of a built-in benchmark: nyuv2, cityscapes, fingers, ... "
        "(layouts and how to get them: docs/datasets.md)",
    )
    p.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's folder")
    p.add_argument(
        "--experiment",
        default=None,
        metavar="FILE",
        help="your own model, data and tasks: a YAML experiment file naming the model and data "
        "factories (schema: docs/experiments.md)",
    )
    if options:
        p.add_argument(
            "--dataset-option",
            action="append",
            type=_option,
            metavar="KEY=VALUE",
            help="dataset option, repeatable, e.g. num_classes=19 (cityscapes) or "
            "val_fraction=0 (validate on the test split)",
        )
    else:
        p.set_defaults(dataset_option=None)


def _add_nproc_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=_positive_int,
        default=None,
        help="train with N processes on this machine (starts torchrun; every step is the "
        "step of the union of their batches, see docs/distributed.md)",
    )


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads (default: the CPUs not busy with other work, at most "
        f"{MAX_DEFAULT_THREADS}; the choice is printed)",
    )


def _build_parser() -> argparse.ArgumentParser:
    from taskbalance import __version__
    from taskbalance.experiments.compare import DEFAULT_EPOCHS, DEFAULT_SIZE, DEFAULT_STEPS

    defaults = {"epochs": DEFAULT_EPOCHS, "steps": DEFAULT_STEPS, "size": DEFAULT_SIZE}
    parser = _Parser(
        prog="taskbalance",
        description="Train multi-task networks with every established way of balancing tasks.",
        epilog="Run 'taskbalance COMMAND --help' for the flags of a command.",
    )
    parser.add_argument("--version", action="version", version=f"taskbalance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_methods_command(sub, defaults)
    _add_recipes_command(sub)
    _add_train_command(sub, defaults)
    _add_compare_command(sub, defaults)
    _add_annotate_command(sub, defaults)
    _add_tune_command(sub, defaults)
    _add_diagnose_command(sub, defaults)
    return parser


def _add_recipes_command(sub: Any) -> None:
    """The ``recipes`` command."""
    p = sub.add_parser(
        "recipes",
        help="list the published protocols (--recipe NAME)",
        description="List the recipes: dataset, model, protocol, the paper and table each follows "
        "and the published numbers stored with it.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also the code read and the notes")
    p.set_defaults(func=_cmd_recipes)


def _add_recipe_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="a published protocol (see 'taskbalance recipes'); flags given override its values",
    )


def _add_methods_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``methods`` command and its flags."""
    p = sub.add_parser(
        "methods",
        help="list the balancing methods",
        description="List every registered balancing method: kind and paper.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show summaries and options")
    p.set_defaults(func=_cmd_methods)


def _add_train_command(sub: Any, defaults: dict[str, Any]) -> None:
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
    _add_data_flags(p)
    _add_recipe_flag(p)
    p.add_argument("--method", help="balancing method (see 'taskbalance methods'; default: ew)")
    p.add_argument("--epochs", type=_positive_int)
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=_positive_int, help="cap on training steps per epoch")
    steps.add_argument(
        "--all-steps",
        dest="steps_all",
        action="store_true",
        help="no cap on steps per epoch (overrides 'steps' in --config)",
    )
    p.add_argument("--out", help="run folder (default: runs/<benchmark>-<method>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument(
        "--affinity", action="store_true",
        help="also log per-epoch TAG task affinity to history/TensorBoard (gradient methods)",
    )
    _add_nproc_flag(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the files of an earlier run in the --out folder and start afresh (without "
        "it, a folder holding another run's results is refused)",
    )
    _add_threads_flag(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--size", choices=("tiny", "default"), help="benchmark size")
    p.add_argument(
        "--option",
        action="append",
        type=_option,
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
    p.set_defaults(func=_cmd_train)


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


def _add_compare_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``compare`` command and its flags."""
    from taskbalance.experiments.compare import (
        DEFAULT_BENCHMARK,
        DEFAULT_EPOCHS,
        DEFAULT_SCHEDULER,
        DEFAULT_SEEDS,
        DEFAULT_STEPS,
        STANDARD_METHODS,
    )
    from taskbalance.training.config import SCHEDULERS

    p = sub.add_parser(
        "compare",
        help="compare methods: leaderboard, Δm%%, plots",
        description="Train each method for each seed plus single-task baselines (method ew, one "
        "task each), then print a leaderboard and write leaderboard.md, results.json and plots. "
        "Finished runs are reused, so an interrupted compare continues where it stopped. "
        f"Without flags: {DEFAULT_BENCHMARK}, the standard methods, {len(DEFAULT_SEEDS)} seeds, "
        f"{DEFAULT_EPOCHS} "
        + ("full epochs" if DEFAULT_STEPS is None else f"epochs of {DEFAULT_STEPS} steps")
        + f", {DEFAULT_SCHEDULER} learning-rate decay; runs train side by side (--jobs), then "
        "an interleaved timing pass measures every method's time per step.",
    )
    p.add_argument("--benchmark", default=DEFAULT_BENCHMARK, help="(default: %(default)s)")
    _add_data_flags(p)
    _add_recipe_flag(p)
    p.add_argument(
        "--methods",
        default=None,
        help="'all' (every method usable without options) or a list m1,m2,... "
        f"(default: {','.join(STANDARD_METHODS)})",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help=f"number of seeds N (0..N-1) or a list 0,3,7 (default: {len(DEFAULT_SEEDS)}; "
        "1 with --labels)",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help=f"learning-rate schedule of every run (default: {DEFAULT_SCHEDULER})",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="runs trained side by side, one process each (default: one per torch thread on a "
        "CPU, each with one thread; 1 on an accelerator)",
    )
    _add_nproc_flag(p)
    p.add_argument(
        "--no-timing",
        action="store_true",
        help="skip the interleaved timing pass (times then come from the runs themselves)",
    )
    p.add_argument(
        "--pareto",
        default=None,
        metavar="A,B",
        help="two metrics task.metric,task.metric for the Pareto plot "
        "(default: the primary metrics of the first two tasks)",
    )
    _add_workflow_flags(p)
    _add_training_flags(
        p, defaults=defaults, out_help="output folder (default: runs/compare-<benchmark>)"
    )
    p.set_defaults(func=_cmd_compare)


def _add_workflow_flags(p: argparse.ArgumentParser) -> None:
    """``compare --labels``: the partial-label workflow comparison."""
    from taskbalance.experiments.workflows import WORKFLOWS, labels_argument, workflows_argument

    p.add_argument(
        "--labels",
        type=labels_argument,
        default=None,
        metavar="TASK=FRACTION,...",
        help="compare the partial-label workflows (masked, staged, annotated) against fully "
        "labelled training, with these label fractions, e.g. depth=0.2",
    )
    p.add_argument(
        "--workflows",
        type=workflows_argument,
        default=None,
        help=f"with --labels: which workflows (default: {','.join(WORKFLOWS)})",
    )
    p.add_argument(
        "--finetune-rounds",
        type=_non_negative_int,
        default=0,
        help="with --labels: fine-tuning rounds after the staged schedule (default: 0)",
    )


def _add_annotate_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``annotate`` command and its flags."""
    from taskbalance.experiments.workflows import labels_argument

    p = sub.add_parser(
        "annotate",
        help="train single-task teachers and write pseudo-labels",
        description="Train a single-task teacher per task on its labelled training samples, "
        "predict the samples that lack a label, keep pseudo-labels whose confidence reaches "
        "--threshold, and write OUT/pseudo_labels.pt for 'taskbalance train --pseudo-labels'. "
        "Real labels are never overwritten.",
    )
    p.add_argument("--benchmark", required=True, help="benchmark name")
    p.add_argument(
        "--labels",
        type=labels_argument,
        required=True,
        metavar="TASK=FRACTION,...",
        help="label fractions of the partially labelled training set, e.g. depth=0.2",
    )
    p.add_argument(
        "--tasks", default=None, help="tasks to annotate, t1,t2 (default: the partial ones)"
    )
    p.add_argument(
        "--teacher-width",
        type=_positive_int,
        default=None,
        help="width of the teachers' backbones (default: the benchmark model's)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.9, help="confidence to keep (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    _add_training_flags(
        p,
        defaults={"epochs": 5, "steps": None, "size": "default"},
        out_help="output folder (default: runs/annotate-<benchmark>)",
    )
    p.set_defaults(func=_cmd_annotate)


def _add_tune_command(sub: Any, defaults: dict[str, Any]) -> None:
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
    _add_data_flags(p)
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=20,
        help="finished trials the study should have; a rerun adds only the missing "
        "ones (default: %(default)s)",
    )
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite:///OUT/tune.db)"
    )
    p.add_argument("--study", default=None, help="study name (default: <benchmark>-static-weights)")
    p.add_argument("--seed", type=int, default=0, help="training and sampler seed (default: 0)")
    _add_training_flags(
        p, defaults=defaults, out_help="output folder (default: runs/tune-<benchmark>)"
    )
    p.set_defaults(func=_cmd_tune)


def _add_diagnose_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``diagnose`` command and its flags."""
    del defaults  # its own defaults: one short run, not compare's
    p = sub.add_parser(
        "diagnose",
        help="gradient conflicts, dominance, task affinity and a grouping recommendation",
        description="Train a short equal-weights run and write summary.md, diagnostics.json "
        "and PNG plots: pairwise gradient cosines, per-task gradient-norm and loss-scale "
        "ratios, first-order TAG inter-task affinity (Fifty et al. 2021), the best split into "
        "k groups for every k, and which family of balancing methods to test with compare. "
        "Files of an earlier diagnose in --out are replaced.",
    )
    p.add_argument("--benchmark", default=None, help="benchmark name (or --dataset)")
    _add_data_flags(p, options=False)
    p.add_argument(
        "--steps", type=_positive_int, default=200, help="training steps (default: %(default)s)"
    )
    p.add_argument(
        "--size", choices=("tiny", "default"), default="default",
        help="benchmark size (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: cpu)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="batch size (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/diagnose-<benchmark>)")
    _add_threads_flag(p)
    p.set_defaults(func=_cmd_diagnose)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = str(err.args[0]) if err.args else text
    return " ".join(text.split())


#: The commands that run under torchrun (the ranks train each run together; rank 0 writes).
DISTRIBUTED_COMMANDS = ("train", "compare")


def _join_torchrun(args: argparse.Namespace) -> bool:
    """Under torchrun: join the group (train, compare) or refuse (the other commands); the
    ranks other than 0 print nothing on stdout. ``False`` when not under torchrun."""
    from taskbalance.training.launch import join_from_environment, under_torchrun

    world = os.environ.get("WORLD_SIZE", "1")
    if args.command not in DISTRIBUTED_COMMANDS:
        if world.isdigit() and int(world) > 1:
            raise UserError(
                f"'taskbalance {args.command}' does not run under torchrun (WORLD_SIZE={world}): "
                "each rank would repeat the whole work; run it in one process (train and "
                "compare run under torchrun, docs/distributed.md)"
            )
        return False
    if not under_torchrun():
        return False
    if getattr(args, "nproc", None) is not None:
        raise UserError("--nproc starts torchrun itself; under torchrun leave --nproc out")
    if join_from_environment() != 0:
        _QUIET.append(sys.stdout)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone reports
    return True


_QUIET: list[Any] = []  # the stdout a rank other than 0 set aside while it runs


def _launch(args: argparse.Namespace, argv: Sequence[str] | None) -> int | None:
    """``--nproc N``: run this command as N processes under torchrun (its exit status)."""
    nproc = getattr(args, "nproc", None)
    if nproc is None or "WORLD_SIZE" in os.environ:
        return None
    from taskbalance.training.launch import launch

    _log(f"starting {nproc} processes with torchrun (torch.distributed.run --standalone)")
    return launch(nproc, list(sys.argv[1:] if argv is None else argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``taskbalance`` command line; returns the exit status."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, argparse errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USER_ERROR)
    args.argv = argv  # which flags were given explicitly (a recipe yields to those)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    debug = os.environ.get("TASKBALANCE_DEBUG", "") not in ("", "0")
    import warnings

    import torch

    # main() may be called in-process (tests, scripts): put back what it changes.
    saved_threads, saved_showwarning = torch.get_num_threads(), warnings.showwarning
    warnings.showwarning = _one_line_warning
    joined = False
    try:
        joined = _join_torchrun(args)
        launched = _launch(args, argv)
        if launched is not None:
            return launched
        if hasattr(args, "threads"):
            _set_threads(args.threads)
        return func(args)
    except KeyboardInterrupt:
        print("taskbalance: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as err:
        if debug or _extra_for(err.name) is None:
            raise
        package, extra = _extra_for(err.name)  # type: ignore[misc]
        print(
            f"taskbalance {args.command}: error: this command needs {package}, which is not "
            f'installed; install the {extra!r} extra: pip install "taskbalance[{extra}]"',
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except (UserError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"taskbalance {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = saved_showwarning
        torch.set_num_threads(saved_threads)
        if joined:
            _leave_torchrun()


def _leave_torchrun() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if _QUIET:
        sys.stdout.close()
        sys.stdout = _QUIET.pop()


#: Import name -> (pip package, extra that installs it). The core (``import taskbalance``) needs
#: torch and numpy only; the commands need the rest (pyproject.toml, optional-dependencies).
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "yaml": ("pyyaml", "cli"),
    "tqdm": ("tqdm", "cli"),
    "optuna": ("optuna", "cli"),
    "matplotlib": ("matplotlib", "cli"),
    "sklearn": ("scikit-learn", "cli"),
    "scipy": ("scipy", "cli"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "torchvision": ("torchvision", "vision"),
}


def _extra_for(module: str | None) -> tuple[str, str] | None:
    """The pip package and extra that provide ``module`` (None for a module of no extra)."""
    return OPTIONAL_PACKAGES.get((module or "").partition(".")[0])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
