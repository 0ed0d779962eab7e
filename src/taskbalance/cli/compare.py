"""taskbalance compare: a leaderboard of methods, or of partial-label workflows (--labels)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from taskbalance.cli._common import (
    UserError,
    add_data_flags,
    add_nproc_flag,
    add_recipe_flag,
    add_training_flags,
    data_name,
    data_settings,
    explicit_dests,
    key_value,
    log,
    non_negative_int,
    optional_training_options,
    out_folder,
    positive_int,
    recipe_settings,
    refuse_benchmark_flags,
)

# What compare writes in its --out folder (deleted by --overwrite).
_COMPARE_FILES = ("runs", "baselines", "plots", "leaderboard.md", "results.json")
# ... with --labels
_WORKFLOW_FILES = (
    "runs",
    "teachers",
    "pseudo_labels.pt",
    "annotate.json",
    "workflows.md",
    "results.json",
)


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
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
    add_data_flags(p)
    add_recipe_flag(p)
    p.add_argument(
        "--methods",
        default=None,
        help="'all' (every method usable without options or with its --option) or a list "
        "m1,m2,... "
        f"(default: {','.join(STANDARD_METHODS)})",
    )
    _add_option_flag(p)
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
        type=positive_int,
        default=None,
        help="runs trained side by side, one process each (default: one per torch thread on a "
        "CPU, each with one thread; 1 on an accelerator)",
    )
    add_nproc_flag(p)
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
    add_training_flags(
        p, defaults=defaults, out_help="output folder (default: runs/compare-<benchmark>)"
    )
    p.set_defaults(func=run, check_launch=check_launch)


def _add_option_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--option",
        action="append",
        type=_method_option,
        default=None,
        metavar="METHOD.KEY=VALUE",
        help="an option of one compared method's runs, repeatable (values read as YAML; a,b,c "
        "is a list), e.g. --option cagrad.c=0.2 --option static.weights=0.7,1.3",
    )


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
        type=non_negative_int,
        default=0,
        help="with --labels: fine-tuning rounds after the staged schedule (default: 0)",
    )


def run(args: argparse.Namespace) -> int:
    from taskbalance.experiments.compare import run_compare

    if _check_flags(args, distributed="WORLD_SIZE" in os.environ):
        return _compare_workflows(args)
    out_dir = out_folder(args, f"compare-{data_name(args)}", _COMPARE_FILES, "comparison")
    settings = _compare_settings(args, out_dir)
    result = run_compare(settings, log=log)
    _print_table(result.markdown)
    print(f"report:  {result.out_dir / 'leaderboard.md'}")
    print(f"results: {result.out_dir / 'results.json'}")
    for name, path in result.plots.items():
        print(f"plot {name}: {path}")
    print(f"took {result.seconds:.1f}s")
    return 0


def _check_flags(args: argparse.Namespace, distributed: bool) -> bool:
    """The flags refused together (``distributed``: under torchrun); ``True`` for the
    partial-label workflows (--labels), ``False`` for the method comparison."""
    if args.labels is not None or args.workflows is not None:
        given = {"--dataset": args.dataset, "--experiment": args.experiment}
        for flag, value in {**given, "--recipe": args.recipe}.items():
            if value is not None:
                raise UserError(
                    f"--labels workflows run on the built-in benchmarks; remove {flag} or --labels"
                )
        if distributed:
            raise UserError(
                "compare --labels/--workflows does not run under torchrun; run it in one "
                "process (the method comparison runs under torchrun)"
            )
        return True
    refuse_benchmark_flags(
        explicit_dests(args, add_command),
        dataset=args.dataset, experiment=args.experiment, recipe=args.recipe,
    )  # fmt: skip
    if args.finetune_rounds:
        raise UserError(
            "--finetune-rounds applies to the partial-label workflows: give --labels TASK=FRACTION"
        )
    return False


def check_launch(args: argparse.Namespace) -> None:
    """``--nproc N``: what the ranks would refuse before training (flags, methods, options,
    double sampling over several processes), refused before torchrun starts; nothing written."""
    from taskbalance.experiments.compare import check_compare

    _check_flags(args, distributed=True)
    out = Path(args.out or Path("runs") / f"compare-{data_name(args)}")
    check_compare(_compare_settings(args, out), distributed=True)


def _compare_settings(args: argparse.Namespace, out_dir: Path) -> Any:
    """The :class:`CompareSettings` of compare's flags (a recipe applied under them)."""
    from taskbalance.experiments.compare import DEFAULT_SCHEDULER, DEFAULT_SEEDS, CompareSettings

    settings = CompareSettings(
        benchmark=args.benchmark,
        **data_settings(args),
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
        method_options=_method_options(args.option),
    )
    if args.recipe is not None:
        settings = _recipe_settings(args, settings)
    return settings


# compare flags (argparse dests) -> CompareSettings fields a recipe sets unless the flag is given
_RECIPE_SETTINGS = ("epochs", "device", "lr", "batch_size", "scheduler")


def _recipe_settings(args: argparse.Namespace, settings: Any) -> Any:
    """``settings`` with recipe ``args.recipe`` applied under the flags given explicitly (its
    seeds unless --seeds)."""
    import dataclasses

    from taskbalance.training.recipes import get_recipe

    fields, extra = recipe_settings(args, settings, _RECIPE_SETTINGS, add_command)
    if "seeds" not in explicit_dests(args, add_command):
        fields["seeds"] = list(get_recipe(args.recipe).seeds)
    return dataclasses.replace(settings, **fields, extra=extra, recipe=args.recipe)


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
    options = _method_options(args.option)
    stray = sorted(set(options) - {method})
    if stray:
        raise UserError(
            f"--option for method(s) {', '.join(stray)}, which the workflows do not train "
            f"(method: {method}); give options as {method}.KEY=VALUE or change --methods"
        )
    out_dir = out_folder(
        args, f"workflows-{args.benchmark}", _WORKFLOW_FILES, "workflow comparison"
    )
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
        method_options=options.get(method),
        size=args.size,
        device=args.device,
        out_dir=str(out_dir),
        finetune_rounds=args.finetune_rounds,
        log=log,
        **optional_training_options(args),
    )
    _print_table(result.markdown)
    if result.out_dir is not None:
        print(f"report:  {result.out_dir / 'workflows.md'}")
    return 0


def _method_option(text: str) -> tuple[str, str, Any]:
    """``METHOD.KEY=VALUE`` -> ``(method, key, value)`` (the value as train's ``--option``)."""
    name, value = key_value(text)
    method, dot, key = name.partition(".")
    if not dot or not method.strip() or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected METHOD.KEY=VALUE (the method whose runs take the option, e.g. "
            f"cagrad.c=0.2), got {text!r}"
        )
    return method.strip(), key.strip(), value


def _method_options(given: list[tuple[str, str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``{method: {key: value}}`` of compare's ``--option`` flags (a key given twice refused)."""
    options: dict[str, dict[str, Any]] = {}
    for method, key, value in given or []:
        if key in options.setdefault(method, {}):
            raise UserError(f"--option {method}.{key} given twice; give it once")
        options[method][key] = value
    return options


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


def _print_table(markdown: str) -> None:
    print()
    print(markdown, end="")
    print()
