"""Time a training step of the default ``multidigits`` run with different torch thread counts
(not a test): what the command line's default ``--threads`` is based on.

Thread counts are interleaved round by round in one process (so a machine that gets busier or
quieter affects each count alike) and the median per count is reported with its spread.

Usage: ``python benchmarks/bench_threads.py [--threads 1,2,4] [--method ew] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = ",".join(str(n) for n in sorted({1, 2, os.cpu_count() or 1}))
    parser.add_argument("--threads", default=default)
    parser.add_argument("--method", default="ew")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5)
    args = parser.parse_args()
    counts = [int(n) for n in args.threads.split(",")]

    from taskbalance.data import load_benchmark
    from taskbalance.training import Trainer, make_loaders

    bench = load_benchmark("multidigits")
    torch.manual_seed(0)
    train_loader, val_loader, _ = make_loaders(bench.train, bench.val, batch_size=64)
    trainer = Trainer(
        bench.build_model(), bench.tasks, args.method, train_loader, val_loader, progress=False
    )
    batch = next(iter(train_loader))
    times: dict[int, list[float]] = {n: [] for n in counts}
    for n in counts:  # warm-up: each count's first steps allocate
        torch.set_num_threads(n)
        trainer.train_step(batch)
    for _ in range(args.rounds):
        for n in counts:
            torch.set_num_threads(n)
            start = time.perf_counter()
            for _ in range(args.per_round):
                trainer.train_step(batch)
            times[n].append((time.perf_counter() - start) / args.per_round)
    print(f"multidigits, batch 64, method {args.method}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}")
    base = statistics.median(times[counts[0]])
    for n in counts:
        med = statistics.median(times[n])
        print(
            f"threads {n}: median {1000 * med:.1f} ms/step (min {1000 * min(times[n]):.1f}, "
            f"max {1000 * max(times[n]):.1f}), {med / base:.2f}x threads {counts[0]}"
        )


if __name__ == "__main__":
    main()
