"""What affinity costs in ``diagnose`` (not a test): forwards per step and wall time.

Three ways to train the same steps on a benchmark (default ``multidigits``, batch 64):

* ``ew``: one forward, one backward of the summed loss (the cost floor);
* ``diagnose``: diagnose's equal-weights gradient step, which holds the per-task gradients and
  their Gramian; the first-order TAG affinity ``lr·G_ij / L_j`` comes from that Gramian, so it
  adds no forward pass;
* ``exact TAG``: the same plus TAG's exact lookahead (Fifty et al. 2021): for every task i, the
  shared parameters moved by ``-lr·g_i``, one more forward to read every task's loss (T extra
  forwards per measured step).

Forward passes are counted with a hook on the model, and the interleaved timing reports the
median seconds per step of each. Then the default ``taskbalance diagnose`` (200 steps and the
report) is timed end to end, with the 1-minute load average before and after (the machine may
be shared).

Usage::

    python benchmarks/bench_affinity.py [--benchmark multidigits] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import torch

from taskbalance.data import load_benchmark
from taskbalance.experiments.diagnose import _EqualGradientSum, run_diagnose, write_report
from taskbalance.training import Trainer
from taskbalance.training.loaders import make_loaders

LR = 1e-3


def _trainer(bench: Any, method: Any) -> Trainer:
    torch.manual_seed(0)
    loader, _, _ = make_loaders(bench.train, None, batch_size=64, seed=0)
    mode = None if isinstance(method, str) else "param"
    trainer = Trainer(bench.build_model(), bench.tasks, method, loader, None, mode=mode,
                      lr=LR, progress=False, save_best=False)  # fmt: skip
    trainer.model.train()
    return trainer


def _exact_lookahead(trainer: Trainer, batch: Any, counting: list[bool]) -> None:
    """TAG's exact affinity of one step: per task, one forward with θ_shared - lr·g_i.

    The Balancer held the g_i but does not hand them out, so they are recomputed here (one
    forward and T backwards, left out of the forward count but not of the time: an upper bound
    of what a built-in exact lookahead would cost)."""
    shared = [p for p in trainer.model.shared_parameters() if p.requires_grad]  # type: ignore[operator]
    inputs = batch[0]
    T = len(trainer.trainable_tasks)
    counting[0] = False
    losses = trainer._losses(batch)
    counting[0] = True
    grads = [torch.autograd.grad(losses[t], shared, retain_graph=True)  # type: ignore[arg-type,index]
             for t in trainer.trainable_tasks]  # fmt: skip
    with torch.no_grad():
        for i in range(T):
            for p, g in zip(shared, grads[i], strict=True):
                p.sub_(LR * g)
            trainer.model(inputs)  # every task's loss after the step on task i
            for p, g in zip(shared, grads[i], strict=True):
                p.add_(LR * g)


def _time(
    trainer: Trainer, steps: int, exact: bool, counter: list[float], counting: list[bool]
) -> float:
    it = iter(trainer.train_loader)
    start = time.perf_counter()
    before = counter[0]
    for _ in range(steps):
        batch = next(it)
        trainer.train_step(batch)
        if exact:
            _exact_lookahead(trainer, batch, counting)
    seconds = (time.perf_counter() - start) / steps
    counter.append((counter[0] - before) / steps)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="multidigits")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = load_benchmark(args.benchmark)
    T = len(bench.tasks)
    setups = {"ew": ("ew", False), "diagnose": (_EqualGradientSum(T), False),
              "exact TAG": (_EqualGradientSum(T), True)}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in setups}
    forwards: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved, so load changes hit every setup alike
        for name, (method, exact) in setups.items():
            trainer = _trainer(bench, method)
            counter, counting = [0.0], [True]

            def hook(*_args: Any, c: list[float] = counter, on: list[bool] = counting) -> None:
                c[0] += 1 if on[0] else 0

            trainer.model.register_forward_hook(hook)
            times[name].append(_time(trainer, args.steps, exact, counter, counting))
            forwards[name] = counter[-1]
    base = statistics.median(times["ew"])
    print(f"{args.benchmark}: T = {T} tasks, batch 64, {args.steps} steps x {args.rounds} rounds, "
          f"{args.threads} thread(s)")  # fmt: skip
    for name in setups:
        med = statistics.median(times[name])
        extra = forwards[name] - 1
        print(f"  {name:>10}: {1e3 * med:7.2f} ms/step ({med / base:.2f}x ew), "
              f"{forwards[name]:.0f} forward(s) per step ({extra:.0f} extra)")  # fmt: skip
    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    result = run_diagnose(args.benchmark)
    with tempfile.TemporaryDirectory() as out:
        write_report(result, out, args.benchmark)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"default diagnose on {args.benchmark} (200 steps + report): {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
