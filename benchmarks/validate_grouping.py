"""Validate ``diagnose`` + ``train --groups`` on ``synthetic-groups`` (not a test).

For each seed (the seed also generates the data):

1. ``diagnose`` (its default steps) recommends the best split into two groups;
2. the six single-task baselines are trained (one-task groups);
3. the recommended groups are trained, one network per group, beside one shared network of
   the same architecture (``shared=True``) and one shared network widened to about the groups'
   parameter count (``--wide-bottom``), so a win of the groups is not only more parameters.

Prints whether the planted grouping was recovered and Δm% (lower is better) of the groups and
the shared networks against the baselines, mean ± standard deviation over seeds and per seed.

Usage::

    python benchmarks/validate_grouping.py [--seeds 0,1,2] [--epochs 30] [--lr 3e-3]
        [--wide-bottom 24] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from taskbalance.data.synthetic_groups import GROUPS, NAME
from taskbalance.experiments.diagnose import analyse, run_diagnose
from taskbalance.experiments.grouped import train_groups


def _config(args: argparse.Namespace, seed: int, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": NAME, "epochs": args.epochs, "steps": None, "lr": args.lr, "seed": seed,
        "batch_size": 64, "progress": False, "out_dir": str(out), **extra,
    }  # fmt: skip


def one_seed(args: argparse.Namespace, seed: int, root: Path) -> dict[str, Any]:
    result = run_diagnose(NAME, steps=args.diagnose_steps, seed=seed)
    two = analyse(result)["groupings"][1]
    groups = [[result.task_names[i] for i in g] for g in two.groups]
    recovered = {frozenset(g) for g in groups} == {frozenset(g) for g in GROUPS}
    quiet: dict[str, Any] = {"log": lambda _m: None, "overwrite": True}
    base = root / f"seed{seed}" / "single"
    train_groups(_config(args, seed, base), [[t] for g in GROUPS for t in g], **quiet)
    grouped = train_groups(
        _config(args, seed, root / f"seed{seed}" / "groups"), groups,
        baselines=base, shared=True, **quiet,
    )  # fmt: skip
    wide = train_groups(
        _config(args, seed, root / f"seed{seed}" / "wide",
                model_options={"bottom_dim": args.wide_bottom}),
        [[t for g in groups for t in g]], baselines=base, **quiet,
    )  # fmt: skip
    assert grouped.delta_m and grouped.shared_delta_m and wide.delta_m
    return {
        "groups": groups, "recovered": recovered,
        "groups_dm": grouped.delta_m["overall"], "shared_dm": grouped.shared_delta_m["overall"],
        "wide_dm": wide.delta_m["overall"], "params": grouped.num_parameters,
        "shared_params": grouped.shared_parameters, "wide_params": wide.num_parameters,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--diagnose-steps", type=int, default=200)
    parser.add_argument("--wide-bottom", type=int, default=24)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out or tempfile.mkdtemp(prefix="validate-grouping-"))
    start = time.process_time()
    rows = [one_seed(args, int(s), root) for s in args.seeds.split(",")]
    for seed, row in zip(args.seeds.split(","), rows, strict=True):
        print(f"seed {seed}: recommended {row['groups']} (planted: {row['recovered']}); Δm% "
              f"groups {row['groups_dm']:+.2f}, shared {row['shared_dm']:+.2f}, "
              f"wide shared {row['wide_dm']:+.2f}")  # fmt: skip
    for key, label, params in (("groups_dm", "groups", "params"),
                               ("shared_dm", "shared", "shared_params"),
                               ("wide_dm", "wide shared", "wide_params")):  # fmt: skip
        values = [r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{label:>12}: Δm% {statistics.mean(values):+.2f} ± {spread:.2f} "
              f"({rows[0][params]} parameters)")  # fmt: skip
    print(f"CPU time {time.process_time() - start:.0f} s; runs in {root}")


if __name__ == "__main__":
    main()
