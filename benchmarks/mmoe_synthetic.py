"""MMoE against hard sharing on ``synthetic-mtl`` across task correlations (not a test).

Reproduces the question of the MMoE paper's synthetic study (Ma et al., KDD 2018, sections
3.2-5.2): does the gain of MMoE over a shared bottom grow as the two tasks become less related?
For each correlation, architecture and seed it trains one run with ``taskbalance.training.train``
(equal weights, Adam, validation-selected epoch; the seed also seeds the data, so every seed is a
new data set as in the paper's repeated runs) and reports, each the mean of the two tasks: the
test MSE at the validation-selected epoch (``test``), the test MSE of the last epoch
(``test_last``) and the last epoch's training loss (``train``; the paper plots a loss against
training steps averaged over 200 runs), mean ± standard deviation over seeds. With ``hard`` and
``mmoe`` and two or more seeds it adds, per correlation and metric, the paired difference
hard − MMoE: mean, 95 % t-interval, paired t-test p, ``d_z = mean / sd`` and the seeds a paired
t-test at 0.05 needs for 80 % power at that ``d_z``; and per seed the growth of that gap against
the highest correlation (gap at p − gap at the highest p). Finished runs are reused, so calling
it again with the same ``--out`` only adds what is missing (two processes on disjoint seeds can
share one ``--out``). ``--train 80000 --epochs 10`` is the study with ten times the data and the
same number of steps. docs/architecture.md has the 3-seed tables, the comparison with the
paper's text and the many-seed study (``--correlations 0.0,0.5,1.0 --seeds 0-19``).

Usage::

    python benchmarks/mmoe_synthetic.py [--correlations 0.0,0.5,0.9,1.0]
        [--seeds 3 | 10-19 | 1000,1001] [--archs hard,mmoe,mmoe-nobias] [--train 8000]
        [--epochs 100] [--lr 1e-3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from taskbalance.experiments.report import paired_t_test
from taskbalance.training import train

#: architecture names of this script -> model options of the benchmark
ARCHS = {
    "hard": {"arch": "hard"},
    "mmoe": {"arch": "mmoe"},
    "mmoe-nobias": {"arch": "mmoe", "gate_bias": False},  # the gate exactly as in eq. 8
    "cgc": {"arch": "cgc"},
    "ple": {"arch": "ple"},
    "dselect_k": {"arch": "dselect_k"},
    "ltb": {"arch": "ltb"},
}


def run_dir(out: Path, arch: str, correlation: float, seed: int) -> Path:
    return out / f"{arch}-p{correlation:g}-seed{seed}"


def run(
    arch: str,
    correlation: float,
    seed: int,
    args: argparse.Namespace,
    out: Path,
) -> None:
    """Train one run unless its results.json exists (an interrupted sweep continues)."""
    folder = run_dir(out, arch, correlation, seed)
    if (folder / "results.json").is_file():
        return
    config = {
        "benchmark": "synthetic-mtl",
        "size": {"correlation": correlation, "train": args.train},
        "model_options": ARCHS[arch],
        "method": "ew",
        "epochs": args.epochs,
        "batch_size": 128,
        "lr": args.lr,
        "seed": seed,
        "device": args.device,
        "out_dir": str(folder),
        "progress": False,
        "tensorboard": False,
        "save_best": False,
    }
    train(config)


def read(folder: Path) -> dict[str, float]:
    """One run's numbers, each the mean over the two tasks: ``test`` the test MSE at the
    validation-selected epoch, ``test_last`` the test MSE and ``train`` the training loss of the
    last epoch (the loss after a fixed number of steps, the quantity of the paper's figures)."""
    result = json.loads((folder / "results.json").read_text())
    last = result["history"][-1]
    return {
        "test": statistics.fmean(m["rmse"] ** 2 for m in result["test"].values()),
        "test_last": statistics.fmean(m["rmse"] ** 2 for m in last["test"].values()),
        "train": statistics.fmean(last["train_loss"].values()),
    }


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"10-19"`` -> 10 to 19; ``"1000,1001"`` -> those."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",")]
        elif "-" in text:
            first, last = (int(s) for s in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give a count (3), a range (10-19) or a list (1,5,9)")
    return seeds


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def seeds_for_power(d_z: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Smallest number of seed pairs at which a two-sided paired t-test at ``alpha`` rejects with
    probability ``power`` when the true standardised effect is ``d_z`` (noncentral t)."""
    from scipy import stats

    if not math.isfinite(d_z) or d_z == 0:
        return None
    for n in range(2, 100_000):
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        nc = abs(d_z) * math.sqrt(n)
        if stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) >= power:
            return n
    return None


def paired_stats(diffs: list[float]) -> str:
    """``mean [95 % CI] | p | d_z | seeds for 80 % power`` of paired differences."""
    from scipy import stats

    test = paired_t_test(diffs)
    if test is None:
        return "n/a | n/a | n/a | n/a"
    n, mean, std = test["n"], test["mean"], test["std"]
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    d_z = mean / std if std > 0 else math.inf
    need = seeds_for_power(d_z)
    return (
        f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] | {test['p']:.3g} | "
        f"{d_z:+.2f} | {need if need is not None else '—'}"
    )


def train_all(args: argparse.Namespace, out: Path) -> None:
    for p in args.correlation_list:
        for seed in args.seed_list:
            for arch in args.arch_list:  # interleaved: the same data seed for every architecture
                run(arch, p, seed, args, out)
                r = read(run_dir(out, arch, p, seed))
                print(
                    f"p={p:g} seed={seed} {arch}: test MSE {r['test']:.4f} (last epoch "
                    f"{r['test_last']:.4f}), train loss {r['train']:.4f}",
                    flush=True,
                )


def collect(args: argparse.Namespace, out: Path) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{correlation: {arch: {metric: [value per seed]}}}``."""
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for p in args.correlation_list:
        row = summary.setdefault(f"{p:g}", {})
        for a in args.arch_list:
            values = [read(run_dir(out, a, p, s)) for s in args.seed_list]
            row[a] = {m: [v[m] for v in values] for m in METRICS}
    return summary


def print_means(args: argparse.Namespace, summary: dict) -> None:
    archs = args.arch_list
    cols = " | ".join(f"{a} {m}" for m in METRICS for a in archs)
    print(f"| correlation | {cols} |")
    print("|---|" + "---|" * (len(METRICS) * len(archs)))
    for p, row in summary.items():
        print(f"| {p} | " + " | ".join(mean_std(row[a][m]) for m in METRICS for a in archs) + " |")


def print_paired(summary: dict) -> None:
    """Paired hard − MMoE per correlation and, per seed, its growth against the highest
    correlation (does the gap widen as the tasks become less related?)."""
    gaps = {
        p: {
            m: [h - x for h, x in zip(row["hard"][m], row["mmoe"][m], strict=True)] for m in METRICS
        }
        for p, row in summary.items()
    }
    top = max(gaps, key=float)
    print("\n| correlation | metric | hard − mmoe [95 % CI] | p | d_z | seeds for 80 % power |")
    print("|---|---|---|---|---|---|")
    for p, per_metric in gaps.items():
        for m, diffs in per_metric.items():
            print(f"| {p} | {m} | {paired_stats(diffs)} |")
    print(f"\n| correlation | metric | gap − gap at p = {top} [95 % CI] | p | d_z | seeds |")
    print("|---|---|---|---|---|---|")
    for p, per_metric in gaps.items():
        if p == top:
            continue
        for m, diffs in per_metric.items():
            growth = [d - t for d, t in zip(diffs, gaps[top][m], strict=True)]
            print(f"| {p} | {m} | {paired_stats(growth)} |")


#: the numbers :func:`read` returns for each run
METRICS = ("test", "test_last", "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--correlations", default="0.0,0.5,0.9,1.0")
    parser.add_argument("--seeds", default="3", help="a count (3), a range (10-19) or a list")
    parser.add_argument("--archs", default="hard,mmoe", help=f"from {', '.join(ARCHS)}")
    parser.add_argument("--train", type=int, default=8000, help="training samples")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.correlation_list = [float(p) for p in args.correlations.split(",")]
    args.arch_list = args.archs.split(",")
    unknown = [a for a in args.arch_list if a not in ARCHS]
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; choose from {', '.join(ARCHS)}")
    try:
        args.seed_list = parse_seeds(args.seeds)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mmoe-synthetic-"))
    start = time.perf_counter()
    train_all(args, out)
    print(
        f"\n{time.perf_counter() - start:.0f}s. MSE, mean of the two tasks, seeds "
        f"{args.seeds}: test = at the validation-selected epoch, test_last = last epoch, "
        "train = training loss of the last epoch.\n"
    )
    summary = collect(args, out)
    print_means(args, summary)
    if "hard" in args.arch_list and "mmoe" in args.arch_list and len(args.seed_list) > 1:
        print_paired(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nruns and summary.json in {out}")


if __name__ == "__main__":
    main()
