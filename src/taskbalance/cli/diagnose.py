"""taskbalance diagnose: task conflicts, affinity and a grouping recommendation."""

from __future__ import annotations

import argparse
from typing import Any

from taskbalance.cli._common import (
    DEVICE_HELP,
    UserError,
    add_data_flags,
    add_threads_flag,
    data_name,
    data_settings,
    explicit_dests,
    log,
    out_folder,
    positive_int,
    refuse_benchmark_flags,
    require_data,
)


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
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
    add_data_flags(p, options=False)
    p.add_argument(
        "--steps", type=positive_int, default=200, help="training steps (default: %(default)s)"
    )
    p.add_argument(
        "--size", choices=("tiny", "default"), default="default",
        help="benchmark size (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default: cpu)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="batch size (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/diagnose-<benchmark>)")
    add_threads_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskbalance.experiments.diagnose import run_diagnose, write_report

    require_data(args)
    settings = data_settings(args)
    if settings["dataset_options"] is not None:
        raise UserError(
            "diagnose reads a dataset with its default options; remove --dataset-option"
        )
    refuse_benchmark_flags(
        explicit_dests(args, add_command),
        dataset=args.dataset, experiment=args.experiment, recipe=None,
    )  # fmt: skip
    name = data_name(args)
    out_dir = out_folder(args, f"diagnose-{name}")
    log(f"diagnose: {args.steps} equal-weights steps on {name}")
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
