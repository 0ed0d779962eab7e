"""Device check of distributed balancing (not run in CI): the union-batch test on CUDA.

Runs the cases of ``tests/balancing/test_distributed.py`` with the model and data on GPUs:
NCCL with one rank per GPU when there are at least two GPUs, otherwise two ranks sharing one GPU
over gloo (CUDA tensors; NCCL refuses two ranks on one device). Every rank's parameters after
two steps are compared with one CPU process on the union batch (float64).

Usage: ``PYTHONPATH=src python benchmarks/device_distributed.py [--cases mgda,ew]``
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "balancing"))
import _distributed_worker as W  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated method names (all if empty)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script checks the GPU path (the CPU test is CI's)")
    gpus = torch.cuda.device_count()
    backend, world = ("nccl", gpus) if gpus >= 2 else ("gloo", 2)
    if world != 2:
        raise SystemExit(f"the cases are written for 2 ranks; found {gpus} GPUs (use 2)")
    os.environ["TASKBALANCE_TEST_CUDA"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mkdtemp()
    start = time.perf_counter()
    mp.start_processes(W.worker, args=(world, port, out, backend), nprocs=world)
    print(f"{world} ranks, {backend}, CUDA: {time.perf_counter() - start:.1f} s")
    ranks = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    wanted = set(filter(None, args.cases.split(",")))
    failures = 0
    for case in W.cases():
        if wanted and case[0] not in wanted:
            continue
        key = "/".join(case)
        got = [r[key] for r in ranks]
        if not all(isinstance(g, torch.Tensor) for g in got):
            print(f"FAIL {key}: {next(g for g in got if not isinstance(g, torch.Tensor))}")
            failures += 1
            continue
        variant = case[2] if case[2] in ("masked", "empty") else "full"
        ref = W.run_case(case[0], case[1], variant, rank=None)
        err = max(float((g - ref).abs().max()) for g in got)
        ok = err <= 1e-9 * max(1.0, float(ref.abs().max()))
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {key}: max |diff| {err:.2e}")
    print(f"nan guard: rank 0: {ranks[0]['nan_guard'][:60]} | rank 1: {ranks[1]['nan_guard'][:60]}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
