"""Peak memory of a balancing step against the size of J (not a test).

A deep MLP trunk (many equal layers, P shared parameters) with T one-unit heads, on the CPU.
Peaks come from the profiler's allocation events (``common.peak_cpu_bytes``), above the memory
held before the call, for:

* ``ew``: one backward of the summed losses - the model's own backward memory;
* ``jacobian``: ``Balancer(upgrad)`` in param mode, J held (target: <= 1.1 x J + ew);
* ``gramian``: ``Balancer(upgrad, memory="gramian")`` (target: O(T² + T x largest parameter));
* ``torchjd``: ``mtl_backward`` + ``jac_to_grad(UPGrad())`` when TorchJD (with quadprog) is
  installed.

Usage: ``python benchmarks/bench_memory.py [--tasks 2,10,40] [--width 512] [--depth 8]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import peak_cpu_bytes
from torch import nn

import taskbalance as tb


class DeepTrunk(nn.Module):
    def __init__(self, num_tasks: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.Tanh()]
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(num_tasks))
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.shared(x)
        self.features = z
        return [h(z).pow(2).mean() for h in self.heads]


def torchjd_step(model: DeepTrunk) -> Callable[[list[torch.Tensor]], None] | None:
    try:
        import torchjd.aggregation as jda
        from torchjd.autojac import jac_to_grad, mtl_backward

        agg = jda.UPGrad()
        agg(torch.randn(2, 3))
    except Exception:  # noqa: BLE001 - optional
        return None
    shared = list(model.shared.parameters())
    heads = [list(h.parameters()) for h in model.heads]

    def step(losses: list[torch.Tensor]) -> None:
        assert model.features is not None  # set by the forward pass
        mtl_backward(losses, model.features, shared_params=shared, tasks_params=heads)
        jac_to_grad(shared, agg)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2,10,40")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| T | P | J MB | ew MB | jacobian MB | jacobian / (J + ew) | gramian MB | "
        "gramian / J | TorchJD MB | TorchJD / (J + ew) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for T in [int(t) for t in args.tasks.split(",")]:
        torch.manual_seed(0)
        model = DeepTrunk(T, args.width, args.depth)
        shared = list(model.shared.parameters())
        P = sum(p.numel() for p in shared)
        J = T * P * 4
        x = torch.randn(args.batch, args.width)

        def measure(
            run: Callable[[list[torch.Tensor]], object], model: DeepTrunk = model, x=x
        ) -> int:
            model.zero_grad(set_to_none=True)
            losses = model(x)
            return peak_cpu_bytes(lambda: run(losses))

        ew = measure(lambda losses: sum(losses).backward())  # type: ignore[union-attr]
        full = tb.Balancer(tb.create("upgrad", T), shared)
        streamed = tb.Balancer(tb.create("upgrad", T), shared, memory="gramian")
        jac = measure(full.backward)
        gram = measure(streamed.backward)
        theirs = torchjd_step(model)
        peer = measure(theirs) if theirs is not None else None
        mb = 1 / 2**20
        print(
            f"| {T} | {P} | {J * mb:.0f} | {ew * mb:.0f} | {jac * mb:.0f} | {jac / (J + ew):.2f} | "
            f"{gram * mb:.1f} | {gram / J:.3f} | "
            f"{'-' if peer is None else f'{peer * mb:.0f}'} | "
            f"{'-' if peer is None else f'{peer / (J + ew):.2f}'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
