"""Loader throughput (samples/s) of the real-dataset readers on fake files in the published layouts.

    PYTHONPATH=src python benchmarks/bench_real_loading.py [--datasets nyuv2,cityscapes,...]
        [--workers 0,1,2] [--samples 48] [--batch-size 8] [--rounds 3] [--dir DIR]

Writes ``--samples`` random samples per dataset at the published image size (NYUv2 288 x 384,
Cityscapes 128 x 256, Fingers 128 x 128, CelebA's aligned JPEGs 218 x 178 read at 64 x 64,
MultiMNIST's 28 x 28 idx files) with :func:`taskbalance.data.real.fake.
write_fake_dataset`, then reads the training folder with the loaders a run uses
(:func:`taskbalance.training.make_loaders`) for each worker count, in interleaved rounds, and
reports the median wall-clock samples/s (an epoch includes starting its workers). The files are
read from the page cache after the first round: this measures decoding and collation, the part
the workers parallelise, not the disk. Compare with the model's samples/s (the progress line of
a run) to see whether loading can starve it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from taskbalance.data import load_dataset
from taskbalance.data.real.fake import write_fake_dataset
from taskbalance.training import make_loaders

SIZES = {
    "nyuv2": (288, 384),
    "cityscapes": (128, 256),
    "fingers": (128, 128),
    "celeba": (218, 178),
    "multimnist": (28, 28),
}
# the dataset options of the training folder read whole (CelebA and MultiMNIST have their own
# validation split: MultiMNIST's takes ``val_size`` of the training images)
OPTIONS = {"celeba": {}, "multimnist": {"val_size": 1}}


def _epoch_rate(loader: torch.utils.data.DataLoader) -> tuple[float, float]:
    """``(samples/s of wall time, samples/s of this process's CPU time)``; the second, for a
    loader without workers, is what an idle core would give on a busy shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    samples = sum(int(batch[0].shape[0]) for batch in loader)
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    return samples / wall, samples / max(used, 1e-9)


def _measure(name: str, root: Path, workers: list[int], batch: int, rounds: int) -> None:
    data = load_dataset(name, root, **OPTIONS.get(name, {"val_fraction": 0}))
    loaders = {
        w: make_loaders(data.train, None, batch_size=batch, seed=0, num_workers=w)[0]
        for w in workers
    }
    rates: dict[int, list[tuple[float, float]]] = {w: [] for w in workers}
    _epoch_rate(loaders[workers[0]])  # warm the page cache
    for _ in range(rounds):  # interleaved: every setting sees the same machine load
        for w, loader in loaders.items():
            rates[w].append(_epoch_rate(loader))
    height, width = SIZES[name]
    for w, pairs in rates.items():
        wall = [p[0] for p in pairs]
        line = (
            f"{name:10s} {height}x{width}  workers {w}: {statistics.median(wall):8.1f} samples/s "
            f"wall (median of {rounds}, range {min(wall):.1f}-{max(wall):.1f})"
        )
        if w == 0:
            line += f"; {statistics.median(p[1] for p in pairs):.1f} samples/s of CPU time"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", default=",".join(SIZES))
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the fake files (default: tmp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name in args.datasets.split(","):
            root = Path(tmp) / name
            write_fake_dataset(name, root, train=args.samples, test=1, size=SIZES[name])
            _measure(name, root, workers, args.batch_size, args.rounds)


if __name__ == "__main__":
    main()
