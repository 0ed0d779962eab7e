"""MMoE against hard sharing on ``synthetic-mtl`` across task correlations (not a test).

Reproduces the question of the MMoE paper's synthetic study (Ma et al., KDD 2018, section 3.2):
does the gain of MMoE over a shared bottom grow as the two tasks become less related? For each
correlation, architecture and seed it trains one run with ``taskbalance.training.train`` (equal
weights, Adam, validation-selected epoch; the seed also seeds the data, so every seed is a new
data set as in the paper's repeated runs) and reports the test MSE averaged over the two tasks,
mean ± standard deviation over seeds, and the paired difference hard − MMoE per seed.

Usage::

    python benchmarks/mmoe_synthetic.py [--correlations 0.0,0.5,0.9,1.0] [--seeds 3]
        [--archs hard,mmoe,mmoe-nobias] [--epochs 100] [--lr 1e-3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

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


def run(
    arch: str, correlation: float, seed: int, epochs: int, lr: float, out: Path, device: str
) -> float:
    config = {
        "benchmark": "synthetic-mtl",
        "size": {"correlation": correlation},
        "model_options": ARCHS[arch],
        "method": "ew",
        "epochs": epochs,
        "batch_size": 128,
        "lr": lr,
        "seed": seed,
        "device": device,
        "out_dir": str(out / f"{arch}-p{correlation:g}-seed{seed}"),
        "progress": False,
        "tensorboard": False,
        "save_best": False,
    }
    result = train(config)
    assert result.test is not None
    return statistics.fmean(m["rmse"] ** 2 for m in result.test.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--correlations", default="0.0,0.5,0.9,1.0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--archs", default="hard,mmoe", help=f"from {', '.join(ARCHS)}")
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
    results: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for p in correlations:
        for seed in range(args.seeds):
            for arch in archs:  # interleaved: the same data seed for every architecture
                mse = run(arch, p, seed, args.epochs, args.lr, out, args.device)
                results.setdefault(f"{p:g}", {}).setdefault(arch, []).append(mse)
                print(f"p={p:g} seed={seed} {arch}: test MSE {mse:.4f}", flush=True)
    print(
        f"\n{time.perf_counter() - start:.0f}s; test MSE (mean of the two tasks), {args.seeds} "
        "seeds\n"
    )
    header = " | ".join(f"{a} mean ± std" for a in archs)
    print(f"| correlation | {header} | hard − mmoe per seed |")
    print("|---|" + "---|" * len(archs) + "---|")
    for p, by_arch in results.items():
        cells = []
        for a in archs:
            v = by_arch[a]
            std = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.4f} ± {std:.4f}")
        diff = ""
        if "hard" in by_arch and "mmoe" in by_arch:
            diff = ", ".join(f"{h - m:+.4f}" for h, m in zip(by_arch["hard"], by_arch["mmoe"]))
        print(f"| {p} | " + " | ".join(cells) + f" | {diff} |")
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"\nruns and summary.json in {out}")


if __name__ == "__main__":
    main()
