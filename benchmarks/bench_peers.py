"""taskbalance against TorchJD on the same model, in one process, interleaved (not a test).

Needs the optional extra: ``pip install -e ".[bench]"`` (TorchJD; its CAGrad and Nash-MTL also
need ``torchjd[cagrad,nash_mtl]``, i.e. cvxpy - without it those two rows are skipped).

Part 1, a training step (T-task CNN of ``common.py``; forward, per-task gradients of the shared
parameters, aggregation, heads, SGD update):

* ours: ``Balancer(method, shared, mode="param")`` (``task_backward`` as given);
* TorchJD: ``mtl_backward(losses, features, ...)`` then ``jac_to_grad(shared, aggregator)``.

Part 2, the aggregation alone on a random ``J`` of ``T x P``: ``method.aggregate(J)`` and the
TorchJD aggregator against a bare ``J @ J.T``.

The ratio ours/TorchJD is median (min-max over rounds) over TorchJD's median; targets: <= 0.9
for the step, and ours <= 1.2x the bare ``J @ J.T`` for the aggregation.

Usage: ``python benchmarks/bench_peers.py [--tasks 10,40] [--methods upgrad,mgda,...]
[--part step|aggregate|both] [--params 10000000]``
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
from common import TaskCNN, interleaved, one_batch, task_losses

import taskbalance as tb

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


def step_candidates(
    name: str, T: int, x: torch.Tensor, task_backward: str
) -> dict[str, Callable[[], object]] | None:
    agg = torchjd_aggregator(name, T)
    if agg is None:
        return None
    # One model for both: the two steps differ only in how they compute the update (separate
    # model instances timed differently by up to 1.6x on this machine, for identical work).
    torch.manual_seed(0)
    model = TaskCNN(T, "conv")
    shared = list(model.shared.parameters())
    heads = [list(h.parameters()) for h in model.heads]
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    method = tb.create(name, T, **one_batch(name, T))
    balancer = tb.Balancer(method, shared, task_backward=task_backward, track_gradients=False)

    def ours() -> None:
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

    return {"ours": ours, "torchjd": theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10,40")
    parser.add_argument(
        "--methods",
        default="upgrad,mgda,pcgrad,gradvac,imtl_g,aligned_mtl,graddrop,cagrad,nash_mtl,"
        "fairgrad,sdmgrad,modo,dualproj,config,excess_mtl,moco,db_mtl",
    )
    parser.add_argument("--part", default="both", choices=["step", "aggregate", "both"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--agg-tasks", type=int, default=10)
    parser.add_argument("--task-backward", default="loop", choices=["loop", "batched"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    print(
        f"threads={args.threads} rounds={args.rounds}x{args.per_round} clock=process CPU time; "
        "ratio = median (min-max over rounds)"
    )
    if args.part in ("step", "both"):
        print(f"\nTraining step, conv heads, batch {args.batch}, {args.size}x{args.size} images")
        print("| method | T | ours ms | TorchJD ms | ours/TorchJD |")
        print("|---|---:|---:|---:|---:|")
        for T in [int(t) for t in args.tasks.split(",")]:
            x = torch.randn(args.batch, 3, args.size, args.size)
            for name in methods:
                steps = step_candidates(name, T, x, args.task_backward)
                if steps is None:
                    continue
                t = interleaved(steps, args.rounds, args.per_round, clock=time.process_time)
                print(
                    f"| {name} | {T} | {t['ours'].median * 1e3:.1f} | "
                    f"{t['torchjd'].median * 1e3:.1f} | {t['ours'].ratio(t['torchjd'])} |",
                    flush=True,
                )
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
