"""Per-sample vs batch-level loading of an in-memory benchmark (ms per batch, interleaved medians).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_loading.py [--benchmark multidigits]

Both loaders give identical batches (tests/data/test_data_loading.py); this measures what the
per-sample ``__getitem__`` + default collate costs against one indexing per tensor.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from taskbalance.data import load_benchmark
from taskbalance.data.loading import batch_loader


def _epoch_ms(loader: DataLoader) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in loader)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmark", default="multidigits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = load_benchmark(args.benchmark)
    data = bench.train
    g = torch.Generator().manual_seed(0)
    loaders = {
        "per-sample": DataLoader(data, batch_size=args.batch_size, shuffle=True, generator=g),
        "batch-level": batch_loader(data, args.batch_size, shuffle=True, generator=g),
    }
    times: dict[str, list[float]] = {k: [] for k in loaders}
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        for name, loader in loaders.items():
            times[name].append(_epoch_ms(loader))
    for name, values in times.items():
        print(f"{name:12s} {statistics.median(values):7.3f} ms/batch (median of {args.rounds})")
    ratio = statistics.median(times["per-sample"]) / statistics.median(times["batch-level"])
    print(f"batch-level is {ratio:.1f}x faster ({args.benchmark}, batch {args.batch_size})")


if __name__ == "__main__":
    main()
