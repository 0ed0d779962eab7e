"""MMoE against hard sharing on ``synthetic-mtl`` across task correlations (not a test).

Reproduces the question of the MMoE paper's synthetic study (Ma et al., KDD 2018, section 3.2):
does the gain of MMoE over a shared bottom grow as the two tasks become less related? For each
correlation, architecture and seed it trains one run with ``taskbalance.training.train`` (equal
weights, Adam, validation-selected epoch; the seed also seeds the data, so every seed is a new
data set as in the paper's repeated runs) and reports the test MSE at the validation-selected
epoch and the last epoch's training loss (both averaged over the two tasks), mean ± standard
deviation over seeds, the paired test difference hard − MMoE per seed and its paired t-test
(t and two-sided p). Finished runs are reused, so calling it again with the same ``--out`` only
adds what is missing. ``--train 80000 --epochs 10`` is the study with ten times the data and the
same number of steps (docs/architecture.md has both tables).

Usage::

    python benchmarks/mmoe_synthetic.py [--correlations 0.0,0.5,0.9,1.0] [--seeds 3]
        [--archs hard,mmoe,mmoe-nobias] [--train 8000] [--epochs 100] [--lr 1e-3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
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


def read(folder: Path) -> tuple[float, float]:
    """Test MSE at the validation-selected epoch and the last epoch's training loss, both the
    mean over the two tasks."""
    result = json.loads((folder / "results.json").read_text())
    test = statistics.fmean(m["rmse"] ** 2 for m in result["test"].values())
    train_loss = statistics.fmean(result["history"][-1]["train_loss"].values())
    return test, train_loss


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--correlations", default="0.0,0.5,0.9,1.0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--archs", default="hard,mmoe", help=f"from {', '.join(ARCHS)}")
    parser.add_argument("--train", type=int, default=8000, help="training samples")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    correlations = [float(p) for p in args.correlations.split(",")]
    archs = args.archs.split(",")
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; choose from {', '.join(ARCHS)}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mmoe-synthetic-"))
    start = time.perf_counter()
    for p in correlations:
        for seed in range(args.seeds):
            for arch in archs:  # interleaved: the same data seed for every architecture
                run(arch, p, seed, args, out)
                test, train_loss = read(run_dir(out, arch, p, seed))
                print(
                    f"p={p:g} seed={seed} {arch}: test MSE {test:.4f}, train loss {train_loss:.4f}",
                    flush=True,
                )
    print(
        f"\n{time.perf_counter() - start:.0f}s. Test MSE at the validation-selected epoch and "
        f"training loss of the last epoch (MSE, mean of the two tasks), {args.seeds} seeds.\n"
    )
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    cols = " | ".join(f"{a} test" for a in archs) + " | " + " | ".join(f"{a} train" for a in archs)
    paired = "hard" in archs and "mmoe" in archs
    head = " test hard − mmoe per seed (mean) | paired t (p) |" if paired else ""
    print(f"| correlation | {cols} |" + head)
    print("|---|" + "---|" * (2 * len(archs)) + ("---|---|" if paired else ""))
    for p in correlations:
        row = summary.setdefault(f"{p:g}", {})
        for a in archs:
            values = [read(run_dir(out, a, p, s)) for s in range(args.seeds)]
            row[a] = {"test_mse": [v[0] for v in values], "train_loss": [v[1] for v in values]}
        cells = [mean_std(row[a]["test_mse"]) for a in archs]
        cells += [mean_std(row[a]["train_loss"]) for a in archs]
        line = f"| {p:g} | " + " | ".join(cells) + " |"
        if paired:
            diffs = [
                h - m for h, m in zip(row["hard"]["test_mse"], row["mmoe"]["test_mse"], strict=True)
            ]
            ttest = paired_t_test(diffs)
            line += " " + ", ".join(f"{d:+.3f}" for d in diffs)
            line += f" ({statistics.fmean(diffs):+.3f}) |"
            line += " n/a |" if ttest is None else f" {ttest['t']:.2f} ({ttest['p']:.3f}) |"
        print(line)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nruns and summary.json in {out}")


if __name__ == "__main__":
    main()
