"""Time one training step of a small 3-task CNN for every balancing method (not a test).

Ratios are measured in one process against the cost floors of DESIGN.md:

* loss methods against ``ew`` (one forward + one backward), target <= 1.05;
* param-mode gradient methods against the autograd floor: one forward, T backward passes
  that produce the per-task gradients, and the optimizer update, target <= 1.2;
* rep-mode gradient methods against ``ew``, target <= 1.3.

Usage: ``python benchmarks/bench_step.py [--device cpu|cuda] [--rounds 7] [--per-round 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import taskbalance as tb

T = 3
OPTIONS: dict[str, dict] = {"static": {"weights": [1.0, 0.5, 2.0]}}
TARGETS = {"loss": 1.05, "param": 1.2, "rep": 1.3}


class ThreeTaskCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.shared = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        c = 2 * width
        self.heads = nn.ModuleList(
            [
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)),
                nn.Sequential(nn.Conv2d(c, 4, 1)),
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1)),
            ]
        )
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.shared(x)
        self.features = z
        return [h(z) for h in self.heads]


def task_losses(out: list[torch.Tensor], y: list[torch.Tensor]) -> list[torch.Tensor]:
    return [
        nn.functional.cross_entropy(out[0], y[0]),
        nn.functional.cross_entropy(out[1], y[1]),
        100.0 * nn.functional.mse_loss(out[2].squeeze(1), y[2]),
    ]


def interleaved_times(
    steps: dict[str, Callable[[], None]], rounds: int, per_round: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per step of each candidate, timed in interleaved rounds.

    Interleaving spreads machine noise (other processes, frequency changes) over all candidates
    instead of letting it land on whichever happened to run at a bad moment.
    """
    for step in steps.values():  # warm-up
        for _ in range(2):
            step()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                step()
            sync()
            samples[key].append((time.perf_counter() - t0) / per_round)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = ThreeTaskCNN().to(device)
    shared = list(model.shared.parameters())
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    side = args.size // 4
    y = [
        torch.randint(0, 10, (args.batch,), device=device),
        torch.randint(0, 4, (args.batch, side, side), device=device),
        torch.randn(args.batch, device=device),
    ]
    all_params = list(model.parameters())
    optimizer = torch.optim.SGD(all_params, lr=1e-4)

    def autograd_floor() -> None:
        # The least any gradient method must do: one forward, T backward passes giving the
        # per-task gradients of the shared parameters (and heads), and an update.
        optimizer.zero_grad(set_to_none=True)
        losses = task_losses(model(x), y)
        per_task = [
            torch.autograd.grad(loss, all_params, retain_graph=i < T - 1, allow_unused=True)
            for i, loss in enumerate(losses)
        ]
        for p, grads in zip(all_params, zip(*per_task)):
            p.grad = sum(g for g in grads if g is not None)
        optimizer.step()

    def method_step(name: str, mode: str) -> Callable[[], None]:
        method = tb.create(name, T, **OPTIONS.get(name, {})).to(device)
        balancer = tb.Balancer(method, shared, mode=mode, track_gradients=False)
        params = [*model.parameters(), *balancer.parameters()]
        opt = torch.optim.SGD(params, lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            balancer.backward(task_losses(out, y), features=model.features)
            opt.step()

        return step

    steps: dict[str, Callable[[], None]] = {"floor": autograd_floor}
    candidates: list[tuple[str, str]] = []
    for name in tb.available_methods():
        kind = tb.method_info(name).kind
        modes = (
            ["param", "rep"]
            if getattr(tb.method_info(name).cls, "supports_rep_mode", True)
            else ["param"]
        )
        for mode in ["loss"] if kind == "loss" else modes:
            candidates.append((name, mode))
            steps[f"{name}/{mode}"] = method_step(name, "param" if mode == "loss" else mode)
    times = interleaved_times(steps, args.rounds, args.per_round, sync)
    floor, ew = times["floor"], times["ew/loss"]
    print(f"device={device} batch={args.batch} size={args.size} tasks={T}")
    print(
        f"ew step {ew * 1e3:.2f} ms; autograd floor (1 forward + {T} backward) {floor * 1e3:.2f} ms"
    )
    print("| method | mode | ms/step | ratio | against | target |")
    print("|---|---|---:|---:|---|---:|")
    for name, mode in candidates:
        seconds = times[f"{name}/{mode}"]
        base, base_name = (floor, "floor") if mode == "param" else (ew, "ew")
        ratio = seconds / base
        flag = "" if ratio <= TARGETS[mode] else " (over target)"
        print(
            f"| {name} | {mode} | {seconds * 1e3:.2f} | {ratio:.2f} | {base_name} | "
            f"{TARGETS[mode]:.2f}{flag} |"
        )


if __name__ == "__main__":
    main()
