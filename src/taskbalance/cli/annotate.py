"""taskbalance annotate: single-task teachers write pseudo-labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taskbalance.cli._common import (
    add_training_flags,
    log,
    optional_training_options,
    out_folder,
    positive_int,
)

# What annotate writes in its --out folder (deleted by --overwrite).
_ANNOTATE_FILES = ("teachers", "pseudo_labels.pt", "annotate.json")


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
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
        type=positive_int,
        default=None,
        help="width of the teachers' backbones (default: the benchmark model's)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.9, help="confidence to keep (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    add_training_flags(
        p,
        defaults={"epochs": 5, "steps": None, "size": "default"},
        out_help="output folder (default: runs/annotate-<benchmark>)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskbalance.experiments.annotate import STORE_NAME, annotate_benchmark, format_summary

    out = str(out_folder(args, f"annotate-{args.benchmark}", _ANNOTATE_FILES, "annotation"))
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
        log=log,
        **optional_training_options(args),
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
