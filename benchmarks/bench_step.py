"""Time a training step against its cost floor as the number of tasks grows (not a test).

For T in a sweep, a 3-conv trunk with T heads (``conv``: two convolutions each; ``tiny``: one
linear unit), all in one process, interleaved (see ``common.py``):

* ``floor``: the least a param-mode gradient method must do: one forward, T backward passes
  (``torch.autograd.grad`` of each task's own loss) and an SGD update;
* ``ew``: one forward, one backward of the sum;
* ``param``: ``Balancer(method, mode="param")`` (target <= 1.1x floor), also with
  ``task_backward="batched"``;
* ``rep``: ``Balancer(method, mode="rep")`` given each head's own view of the features
  (``model.head_inputs``: one backward for every task's row; target <= 1.3x ``ew``; methods with
  per-parameter state have no rep mode); ``rep-z``: the same given the shared features
  (``model.features``: one backward per task);
* ``gradnorm``: the loss method that measures T gradient norms, given the heads' views (target
  <= 1.3x ``ew`` at T=10);
* ``gn-batched``: ``gradnorm`` with ``task_backward="batched"`` (its T gradients of the last
  shared layer in one batched backward instead of one backward per task);
* ``gn-floor``: GradNorm's least work with exact norms as bare autograd calls (forward, one
  backward through the heads to their views, the T weight gradients of the last shared conv W
  (one backward from the views each), one backward through the trunk to every shared parameter
  but W, whose gradient of the combined loss is the sum of its T): what any exact GradNorm step
  costs; a last table gives the same bound counted in FLOPs (``common.gradnorm_flop_bound``);
* ``--loss-methods``: every other loss method through the Balancer (one backward of
  ``combine(L)``; target <= 1.05x ``ew``), in a second table;
* methods with ``sampling`` (``modo``, ``sdmgrad``) run the columns above with
  ``sampling="single"`` (one batch); a row ``name[independent]`` times their default double
  sampling as the Trainer runs it (three forwards over thirds of the batch,
  ``Balancer.backward_independent``) against the same floor.

Ratios are median (min-max over rounds) of a candidate / median of its base.

``--malloc keep`` (default): glibc keeps freed memory (``common.keep_freed_memory``), so the
batched and GradNorm columns (T-times larger temporaries) do not pay page faults that depend on
the heap's history (see ``bench_peers.py``); ``--malloc default``: glibc's dynamic trimming.

``--trunk deep``: a ResNet-20-like shared part (19 convolutions, the last one, GradNorm's W,
about 1/19 of the trunk's work, as in real networks) instead of the 3 convolutions (whose last
is a third of it). ``--methods none``: only ``ew``, ``gradnorm`` and ``gn-floor`` (no floor).

Usage: ``python benchmarks/bench_step.py [--tasks 2,3,5,10,20,40] [--heads conv,tiny]
[--rounds 5] [--per-round 2] [--methods mgda|m1,m2|all|none] [--loss-methods none|m1,m2|all]
[--trunk small|deep] [--device cpu] [--malloc keep|default]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from common import (
    TaskCNN,
    Timing,
    gradnorm_flop_bound,
    interleaved,
    keep_freed_memory,
    one_batch,
    task_losses,
)

import taskbalance as tb


def gradnorm_floor_step(
    model: TaskCNN, x: torch.Tensor, T: int, opt: torch.optim.Optimizer
) -> Callable[[], None]:
    """GradNorm's least work with exact norms, as bare autograd calls (the ``gn-floor`` column)."""
    params = list(model.parameters())
    shared = list(model.shared.parameters())
    rows = torch.empty(0, device=x.device)
    last = [p for p in shared if p.dim() >= 2][-1]
    w_grads = torch.empty(T, *last.shape, device=x.device)

    def gradnorm_floor() -> None:
        # forward, ONE backward through the heads to their views of z (rows of J), the T weight
        # gradients of the last shared conv W (one backward from z per task), one backward of the
        # combined direction through the trunk to every shared parameter but W (W's gradient of
        # the combined loss is the sum of the T it has).
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model(x))
        views = list(model.head_inputs.values())
        if rows.shape[1:] != views[0].shape:
            rows.resize_(T, *views[0].shape)  # kept from step to step, as the Balancer does
        hooks = [v.register_hook(lambda g, t=t: rows[t].copy_(g)) for t, v in enumerate(views)]
        head_params = [p for p in params if all(p is not q for q in shared)]
        grads = torch.autograd.grad(losses, [*views, *head_params])
        for hook in hooks:
            hook.remove()
        for p, g in zip(head_params, grads[T:]):
            p.grad = g
        J = rows
        for t in range(T):  # one backward per task (as the Balancer's default task_backward)
            (g,) = torch.autograd.grad(views[0], last, J[t], retain_graph=True)
            w_grads[t].copy_(g)
        last.grad = w_grads.sum(dim=0)  # the combined loss's W gradient: no second one
        others = [p for p in shared if p is not last]
        torch.autograd.backward(views[0], J.sum(dim=0), inputs=others)
        opt.step()

    return gradnorm_floor


def candidates(
    model: TaskCNN, x: torch.Tensor, T: int, methods: list[str], loss_methods: list[str]
) -> dict[str, Callable[[], object]]:
    params = list(model.parameters())
    shared = list(model.shared.parameters())
    opt = torch.optim.SGD(params, lr=1e-5)

    def floor() -> None:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(model(x))
        total = [torch.zeros_like(p) for p in params]
        for i, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, params, retain_graph=i < T - 1, allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc += g
        for p, g in zip(params, total):
            p.grad = g
        opt.step()

    def ew() -> None:
        opt.zero_grad(set_to_none=True)
        torch.stack(task_losses(model(x))).sum().backward()
        opt.step()

    def balanced(name: str, mode: str, views: bool = True, **options: object) -> Callable[[], None]:
        method = tb.create(name, T, **one_batch(name, T))
        balancer = tb.Balancer(method, shared, mode=mode, **options)  # type: ignore[arg-type]
        step_opt = torch.optim.SGD([*params, *balancer.parameters()], lr=1e-5)

        def step() -> None:
            step_opt.zero_grad(set_to_none=True)
            losses = task_losses(model(x))
            balancer.backward(losses, features=model.head_inputs if views else model.features)
            step_opt.step()

        return step

    def independent(name: str) -> Callable[[], None]:
        balancer = tb.Balancer(tb.create(name, T), shared)
        step_opt = torch.optim.SGD(params, lr=1e-5)

        def step() -> None:
            step_opt.zero_grad(set_to_none=True)
            parts = [task_losses(model(part)) for part in x.tensor_split(3)]
            balancer.backward_independent(parts)
            step_opt.step()

        return step

    steps: dict[str, Callable[[], object]] = {
        **({"floor": floor} if methods else {}),
        "ew": ew,
        "gradnorm": balanced("gradnorm", "param"),
        "gn-batched": balanced("gradnorm", "param", task_backward="batched"),
        "gn-floor": gradnorm_floor_step(model, x, T, opt),
    }
    for method in loss_methods:
        steps[f"{method}/loss"] = balanced(method, "param")
    for method in methods:
        if "sampling" in tb.method_info(method).options:
            steps[f"{method}/independent"] = independent(method)
        steps[f"{method}/param"] = balanced(method, "param")
        steps[f"{method}/batched"] = balanced(method, "param", task_backward="batched")
        if getattr(tb.method_info(method).cls, "supports_rep_mode", True):
            steps[f"{method}/rep"] = balanced(method, "rep")
            steps[f"{method}/rep-z"] = balanced(method, "rep", views=False)
    return steps


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2,3,5,10,20,40")
    parser.add_argument("--heads", default="conv,tiny")
    parser.add_argument(
        "--methods",
        default="mgda",
        help="gradient methods, comma-separated, 'all', or 'none' (only ew and GradNorm's columns)",
    )
    parser.add_argument(
        "--loss-methods",
        default="none",
        help="loss methods (besides gradnorm) timed against ew, comma-separated, 'all' or 'none'",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument(
        "--trunk",
        default="small",
        choices=["small", "deep"],
        help="the shared part: 3 convolutions, or a ResNet-20-like trunk of 19 (common.py)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--malloc",
        default="keep",
        choices=["keep", "default"],
        help="keep: glibc keeps freed memory (no page faults from heap trimming); "
        "default: glibc's dynamic trimming",
    )
    return parser.parse_args()


def method_names(text: str, kind: str) -> list[str]:
    """``all`` (every method of ``kind`` but gradnorm, which has its own columns), ``none`` or
    a comma-separated list."""
    if text == "all":
        return [
            n for n in tb.available_methods() if tb.method_info(n).kind == kind and n != "gradnorm"
        ]
    return [] if text == "none" else text.split(",")


def step_rows(t: dict[str, Timing], heads: str, T: int, methods: list[str]) -> list[str]:
    """The main table's rows of one model: one per gradient method (GradNorm's columns only
    when there is none), a ``name[independent]`` row before a double-sampling method."""
    ew = t["ew"]
    gradnorm = " | ".join(t[k].ratio(ew) for k in ("gradnorm", "gn-floor", "gn-batched"))
    if not methods:
        return [f"| {heads} | {T} | - | - | {ew.median * 1e3:.1f} | - | - | - | - | {gradnorm} |"]
    rows = []
    floor = t["floor"]
    head = f"{floor.median * 1e3:.1f} | {ew.median * 1e3:.1f}"
    for method in methods:
        double = t.get(f"{method}/independent")
        if double is not None:
            rows.append(
                f"| {heads} | {T} | {method}[independent] | {head} | {double.ratio(floor)} "
                "| - | - | - | - | - | - |"
            )
        rep, rep_z = t.get(f"{method}/rep"), t.get(f"{method}/rep-z")
        rows.append(
            f"| {heads} | {T} | {method} | {head} | {t[f'{method}/param'].ratio(floor)} | "
            f"{t[f'{method}/batched'].ratio(floor)} | "
            f"{'-' if rep is None else rep.ratio(ew)} | "
            f"{'-' if rep_z is None else rep_z.ratio(ew)} | {gradnorm} |"
        )
    return rows


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    malloc = args.malloc
    if malloc == "keep" and not keep_freed_memory():
        malloc = "default (keep unavailable: not glibc)"
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    methods = method_names(args.methods, "gradient")
    loss_methods = method_names(args.loss_methods, "loss")
    loss_rows: list[str] = []
    bound_rows: list[str] = []
    print(
        f"device={device} trunk={args.trunk} threads={args.threads} batch={args.batch} "
        f"size={args.size} malloc={malloc} "
        f"rounds={args.rounds}x{args.per_round}; "
        f"clock={'wall' if device.type != 'cpu' else 'process CPU time'}; "
        "ratio = median (min-max over rounds)"
    )
    print(
        "| heads | T | method | floor ms | ew ms | param/floor | batched/floor | rep/ew "
        "| rep-z/ew | gradnorm/ew | gn-floor/ew | gn-batched/ew |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for heads in args.heads.split(","):
        for T in [int(t) for t in args.tasks.split(",")]:
            torch.manual_seed(0)
            model = TaskCNN(T, heads, trunk=args.trunk).to(device)
            x = torch.randn(args.batch, 3, args.size, args.size, device=device)
            ew_macs, extra, bound = gradnorm_flop_bound(model, x)
            bound_rows.append(
                f"| {args.trunk} | {heads} | {T} | {2 * ew_macs / 1e9:.3f} | "
                f"{2 * extra / 1e9:.3f} | {bound:.2f} |"
            )
            clock = time.perf_counter if device.type != "cpu" else time.process_time
            steps = candidates(model, x, T, methods, loss_methods)
            t = interleaved(steps, args.rounds, args.per_round, sync, clock=clock)
            print("\n".join(step_rows(t, heads, T, methods)), flush=True)
            loss_rows += [
                f"| {heads} | {T} | {m} | {t[f'{m}/loss'].ratio(t['ew'])} |" for m in loss_methods
            ]

    if loss_rows:
        print("\n| heads | T | loss method | step/ew |\n|---|---:|---|---:|")
        print("\n".join(loss_rows))
    print(
        "\nGradNorm's exact-norm lower bound in FLOPs (convolutions and linear layers; "
        "elementwise work left out): ew = forward + backward; extra = the T - 1 weight "
        "gradients of the last shared layer beyond the one ew computes\n"
        "| trunk | heads | T | ew GFLOP | extra GFLOP | (ew + extra) / ew |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    print("\n".join(bound_rows))

if __name__ == "__main__":
    main()
