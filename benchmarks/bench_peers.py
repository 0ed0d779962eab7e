"""taskbalance against TorchJD on the same model, in one process, interleaved (not a test).

Needs the optional extra: ``pip install -e ".[bench]"`` (TorchJD; its CAGrad and Nash-MTL also
need ``torchjd[cagrad,nash_mtl]``, i.e. cvxpy - without it those two rows are skipped).

Part 1, a training step (T-task CNN of ``common.py``; forward, per-task gradients of the shared
parameters, aggregation, heads, SGD update), timed with two autograd floors in the same rounds:

* ours: ``Balancer(method, shared, mode="param")`` (``task_backward`` as given: ``loop``,
  ``batched`` or ``both``);
* TorchJD: ``mtl_backward(losses, features, ...)`` then ``jac_to_grad(shared, aggregator)``;
* ``loop`` floor: forward, one ``backward`` per task from its own loss (its head, then the shared
  trunk), SGD step - what our default step computes, without J or a method;
* ``batched`` floor: forward, one ``autograd.grad`` per task from its loss to the features and its
  head, then ONE batched backward (``is_grads_batched``) of the T feature gradients through the
  trunk, SGD step - what TorchJD's step computes (see below), without J or an aggregator.

The floor is the smaller of the two; each step is reported over it, and ours over TorchJD.

How TorchJD 0.18 computes the Jacobian (read from its installed source, facts only):
``mtl_backward`` runs one ``autograd.grad`` per task from the task's loss to its head parameters
and the features (each head traversed once, heads' ``.grad`` accumulated), stacks the T feature
gradients into a ``[T, *z.shape]`` tensor (a copy), and runs ONE backward of that stack through
the trunk under ``torch.vmap`` (a batched vector-Jacobian product over the T tasks only, not over
the heads; ``parallel_chunk_size`` splits it); the per-parameter ``[T, *p.shape]`` blocks go to
``.jac``. ``jac_to_grad`` concatenates them into J ``[T, P]`` (another copy) and calls the
aggregator. That is our ``task_backward="batched"`` with features; our default ``"loop"`` runs
T backwards from the losses instead. Both compute the same T trunk backwards; vmapping them saves
per-call overhead, but the batched convolution backward is no faster per task on this CPU. The
two floors, measured (keep mode, 2-core machine under load, ``--rounds 5-7``): batched/loop
0.93-1.01 at batch 16, 16x16 and T=10, 0.85-1.06 at T=40; 0.99-1.16 at batch 32, 32x32; with
glibc's default allocator 1.04-1.26 (page faults, below). Our step with ``batched``/``loop``:
0.90-1.05, 0.84-1.01, 1.01-1.28, 0.99-1.32 in the same cases. So ``loop`` stays the default and
``batched`` an option.

Allocator state (why TorchJD's step looked bimodal, 16-18 ms or 27-29 ms at T=10 for identical
work): the batched path allocates T-times larger temporaries (the stacked feature gradients,
vmapped activation gradients, the concatenated J: 1-80 MB). glibc's malloc returns the top of its
heap to the kernel once more than ``M_TRIM_THRESHOLD`` is free there (a threshold it raises as
large blocks are freed), and the next step page-faults the memory back in, zero-filled by the
kernel. Whether a step's large blocks end at the heap's top depends on the history of the
process (what ran before, in which order). Measured (``strace -e brk,mmap,munmap`` and
``getrusage`` minor faults; UPGrad, batch 16, 16x16): by default TorchJD makes 10-13 ``brk``
calls and 4,300-5,800 minor faults a step at T=10, 15,000-19,700 at T=40; our ``loop`` step 0-190
(its temporaries are one task's, reused from the heap), our ``batched`` 840-10,000; with trimming
off, all of them 0-730 after warm-up. A fault costs ~1.5 us here (zero-filling a page): TorchJD's
step is then 1.36-1.85x the floor instead of 1.05-1.14x, which was the whole bimodality (the
method timed first in a process found a different heap layout, and the old ratios of 0.39-0.84
were partly this). So by default (``--malloc keep``) this script first tells glibc to
keep freed memory (``mallopt`` of ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` to 1 GiB), warms
every candidate up twice, and reports minor page faults per timed step: every candidate then runs
in the same allocator state, at its compute cost (the ratios moved by <= 0.08 when the
methods ran in reverse order).
``--malloc default`` keeps glibc's dynamic behaviour (what a plain process gets; the faults
column shows who pays). Not glibc: the option is reported as unavailable and nothing changes.

Part 2, the aggregation alone on a random ``J`` of ``T x P``: ``method.aggregate(J)`` and the
TorchJD aggregator against a bare ``J @ J.T``.

Part 3 (``--part solver``, not in ``both``), MGDA's min-norm solve alone on a ``T x T`` Gramian
(``solvers.min_norm_weights``), per call in µs: the default (``auto``: the NNLS form by block
principal pivoting, verified by its KKT conditions) against the exact solver it replaced, still
there as the fallback (``enumerate`` for T <= 8, ``wolfe`` beyond), on two kinds of Gramian:
``random`` (T Gaussian rows of 512: every row in the support) and ``shared`` (rows
``0.3 c + noise``, conflicting pairs: a partial support).

Targets: ours/TorchJD <= 0.9 for the step; ours <= 1.2x the bare ``J @ J.T`` for the
aggregation. Results and what they mean: the CHANGELOG (issue 10's step table).

Usage: ``python benchmarks/bench_peers.py [--tasks 10,40] [--methods upgrad,mgda,...]
[--part step|aggregate|both|solver] [--params 10000000] [--task-backward loop|batched|both]
[--malloc keep|default]``
"""

from __future__ import annotations

import argparse
import functools
import resource
import time
from collections.abc import Callable

import torch
from common import TaskCNN, interleaved, keep_freed_memory, one_batch, task_losses

import taskbalance as tb
from taskbalance.balancing import solvers

try:
    import torchjd.aggregation as jda
    from torchjd.autojac import jac_to_grad, mtl_backward
except ImportError as exc:  # pragma: no cover - optional dependency
    raise SystemExit('bench_peers needs TorchJD: pip install -e ".[bench]"') from exc


#: Gradient methods without a TorchJD counterpart (0.18): no row.
NO_COUNTERPART = {"moco", "db_mtl"}


def torchjd_aggregator(name: str, T: int) -> jda.Aggregator | None:
    """The TorchJD aggregator of the same method and our defaults, or None when unavailable.

    TorchJD's SDMGrad and MoDo are weightings of ``J₁ J₂ᵀ`` (two mini-batches); ours use one
    batch (``J Jᵀ``, see their docstrings), so theirs is given the Gramian of the one batch.
    """
    if name in NO_COUNTERPART:
        print(f"  ({name}: no TorchJD counterpart; skipped)")
        return None
    factories: dict[str, Callable[[], jda.Aggregator]] = {
        "upgrad": jda.UPGrad,
        "mgda": jda.MGDA,
        "pcgrad": jda.PCGrad,
        "gradvac": lambda: jda.GradVac(beta=0.01),
        "imtl_g": jda.IMTLG,
        "aligned_mtl": jda.AlignedMTL,
        "graddrop": jda.GradDrop,
        "cagrad": lambda: jda.CAGrad(c=0.4),
        "nash_mtl": lambda: jda.NashMTL(n_tasks=T),
        "fairgrad": lambda: jda.FairGrad(alpha=1.0),
        "dualproj": jda.DualProj,
        "config": jda.ConFIG,
        "excess_mtl": lambda: jda.ExcessMTL(robust_step_size=1e-2),
        "sdmgrad": lambda: jda.GramianWeightedAggregator(jda.SDMGradWeighting()),  # type: ignore[arg-type]
        "modo": lambda: jda.GramianWeightedAggregator(
            jda.MoDoWeighting(gamma=1e-3, rho=0.1)  # type: ignore[arg-type]
        ),
    }
    try:
        agg = factories[name]()
        agg(torch.randn(T, 8))  # cvxpy-backed ones fail here
    except Exception as exc:  # noqa: BLE001 - report and skip
        print(f"  (TorchJD {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}; skipped)")
        return None
    return agg


class Faults:
    """Wraps a step: minor page faults per call, counted after the first ``skip`` calls."""

    def __init__(self, step: Callable[[], object], skip: int) -> None:
        self.step, self.skip, self.calls, self.faults = step, skip, 0, 0

    def __call__(self) -> None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.step()
        self.calls += 1
        if self.calls > self.skip:
            self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    @property
    def per_call(self) -> float:
        return self.faults / max(self.calls - self.skip, 1)


def step_candidates(
    name: str, T: int, x: torch.Tensor, task_backward: list[str]
) -> dict[str, Callable[[], object]] | None:
    agg = torchjd_aggregator(name, T)
    if agg is None:
        return None
    # One model for all: the steps differ only in how they compute the update (separate
    # model instances timed differently by up to 1.6x on this machine, for identical work).
    torch.manual_seed(0)
    model = TaskCNN(T, "conv")
    shared = list(model.shared.parameters())
    heads = [list(h.parameters()) for h in model.heads]
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)

    def ours(balancer: tb.Balancer) -> None:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model(x))
        balancer.backward(losses, features=model.features)
        opt.step()

    def theirs() -> None:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model(x))
        assert model.features is not None  # set by the forward pass
        mtl_backward(losses, model.features, shared_params=shared, tasks_params=heads)
        jac_to_grad(shared, agg)
        opt.step()

    def loop_floor() -> None:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model(x))
        for t, loss in enumerate(losses):
            loss.backward(retain_graph=t < T - 1)
        opt.step()

    def batched_floor() -> None:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model(x))
        z = model.features
        assert z is not None
        rows = []
        for t, loss in enumerate(losses):
            gz, *gh = torch.autograd.grad(loss, [z, *heads[t]], retain_graph=True)
            rows.append(gz)
            for p, g in zip(heads[t], gh):
                p.grad = g
        torch.autograd.grad([z], shared, grad_outputs=[torch.stack(rows)], is_grads_batched=True)
        opt.step()

    steps: dict[str, Callable[[], object]] = {}
    for mode in task_backward:
        method = tb.create(name, T, **one_batch(name, T))
        balancer = tb.Balancer(method, shared, task_backward=mode, track_gradients=False)
        steps[f"ours-{mode}"] = functools.partial(ours, balancer)
    steps.update(torchjd=theirs, loop_floor=loop_floor, batched_floor=batched_floor)
    return steps


def step_table(args: argparse.Namespace, methods: list[str]) -> None:
    modes = ["loop", "batched"] if args.task_backward == "both" else [args.task_backward]
    print(f"\nTraining step, conv heads, batch {args.batch}, {args.size}x{args.size} images")
    print("floor = min(loop floor, batched floor); faults = minor page faults per timed step")
    print(
        "| method | T | task_backward | ours ms | TorchJD ms | ours/TorchJD | ours/floor "
        "| TorchJD/floor | floor ms (loop, batched) | faults ours, TorchJD |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---|")
    warmup = 2
    for T in [int(t) for t in args.tasks.split(",")]:
        x = torch.randn(args.batch, 3, args.size, args.size)
        for name in methods:
            steps = step_candidates(name, T, x, modes)
            if steps is None:
                continue
            counted = {k: Faults(step, warmup) for k, step in steps.items()}
            t = interleaved(
                dict(counted), args.rounds, args.per_round, warmup=warmup, clock=time.process_time
            )
            loop, batched = t["loop_floor"], t["batched_floor"]
            floor = loop if loop.median <= batched.median else batched
            for mode in modes:
                mine = t[f"ours-{mode}"]
                print(
                    f"| {name} | {T} | {mode} | {mine.median * 1e3:.1f} | "
                    f"{t['torchjd'].median * 1e3:.1f} | {mine.ratio(t['torchjd'])} | "
                    f"{mine.median / floor.median:.2f} | "
                    f"{t['torchjd'].median / floor.median:.2f} | "
                    f"{loop.median * 1e3:.1f}, {batched.median * 1e3:.1f} | "
                    f"{counted[f'ours-{mode}'].per_call:.0f}, "
                    f"{counted['torchjd'].per_call:.0f} |",
                    flush=True,
                )


def solver_gramian(kind: str, T: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(T)
    J = torch.randn(T, 512, generator=gen, dtype=torch.float64)
    if kind == "shared":
        J = J + 0.3 * torch.randn(512, generator=gen, dtype=torch.float64)
        J[1::4] = -0.7 * J[0::4][: J[1::4].shape[0]] + 0.2 * J[1::4]  # conflicting pairs
    return solvers.gramian(J)


def solver_table(tasks: list[int], rounds: int) -> None:
    """MGDA's solve on the Gramian: the default against the exact solver it replaced."""
    print("\nMGDA's min-norm solve alone (T x T Gramian, float64), µs per call (process CPU time)")
    print("| T | Gramian | support | auto µs | fallback µs (path) | fallback / auto |")
    print("|---:|---|---:|---:|---:|---:|")
    for T in tasks:
        for kind in ("random", "shared"):
            G = solver_gramian(kind, T)
            old = "enumerate" if T <= solvers.ENUMERATE_MAX else "wolfe"
            candidates: dict[str, Callable[[], object]] = {
                "auto": functools.partial(solvers.min_norm_weights, G)
            }
            if T > 2:  # two tasks: the closed form, no fallback
                candidates["old"] = functools.partial(solvers.min_norm_weights, G, old)
            t = interleaved(candidates, rounds, 200 if T <= 10 else 50, clock=time.process_time)
            support = int((solvers.min_norm_weights(G) > 0).sum())
            fallback = (
                f"{t['old'].median * 1e6:.0f} ({old}) | {t['old'].ratio(t['auto'])}"
                if "old" in t
                else "- | -"
            )
            print(
                f"| {T} | {kind} | {support} | {t['auto'].median * 1e6:.0f} | {fallback} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10,40")
    parser.add_argument(
        "--methods",
        default="upgrad,mgda,pcgrad,gradvac,imtl_g,aligned_mtl,graddrop,cagrad,nash_mtl,"
        "fairgrad,sdmgrad,modo,dualproj,config,excess_mtl,moco,db_mtl",
    )
    parser.add_argument("--part", default="both", choices=["step", "aggregate", "both", "solver"])
    parser.add_argument("--solver-tasks", default="2,3,5,10,20,40")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--agg-tasks", type=int, default=10)
    parser.add_argument("--task-backward", default="loop", choices=["loop", "batched", "both"])
    parser.add_argument(
        "--malloc",
        default="keep",
        choices=["keep", "default"],
        help="keep: glibc keeps freed memory (every candidate in the same allocator state); "
        "default: glibc's dynamic trimming (see the docstring)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    malloc = args.malloc
    if malloc == "keep" and not keep_freed_memory():
        malloc = "default (keep unavailable: not glibc)"
    print(
        f"threads={args.threads} rounds={args.rounds}x{args.per_round} clock=process CPU time; "
        f"malloc={malloc}; ratio = median (min-max over rounds)"
    )
    if args.part == "solver":
        solver_table([int(t) for t in args.solver_tasks.split(",")], args.rounds)
    if args.part in ("step", "both"):
        step_table(args, methods)
    if args.part in ("aggregate", "both"):
        T, P = args.agg_tasks, args.params
        J = torch.randn(T, P, generator=torch.Generator().manual_seed(0))
        print(f"\nAggregation alone, J of {T} x {P:.0e} float32")
        print("| method | ours ms | TorchJD ms | ours / J@J.T | TorchJD / J@J.T |")
        print("|---|---:|---:|---:|---:|")
        for name in methods:
            agg = torchjd_aggregator(name, T)
            ours = tb.create(name, T, **one_batch(name, T))
            assert isinstance(ours, tb.GradientMethod)
            candidates: dict[str, Callable[[], object]] = {
                "bare": lambda: J @ J.T,
                "ours": functools.partial(ours.aggregate, J),
            }
            if agg is not None:
                candidates["torchjd"] = functools.partial(agg, J)
            t = interleaved(candidates, args.rounds, args.per_round, clock=time.process_time)
            theirs = t.get("torchjd")
            print(
                f"| {name} | {t['ours'].median * 1e3:.0f} | "
                f"{'-' if theirs is None else f'{theirs.median * 1e3:.0f}'} | "
                f"{t['ours'].ratio(t['bare'])} | "
                f"{'-' if theirs is None else theirs.ratio(t['bare'])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
