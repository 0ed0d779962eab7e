"""Balancer(memory="gramian"): the same update as the full-J path without ever holding J."""

from __future__ import annotations

import pytest
import torch
from _methods import one_batch
from torch import nn

import taskbalance as tb

GRAMIAN_METHODS = [
    n
    for n in tb.available_methods()
    if tb.method_info(n).kind == "gradient" and tb.create(n, 2).uses_gramian
]
OPTIONS: dict[str, dict[str, object]] = {
    "mgda": {"normalization": "loss+"},
    "pcgrad": {"seed": 3},
    "gradvac": {"seed": 3},
    "graddrop": {"seed": 3},
}


class Net(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(6, 2) for _ in range(num_tasks))
        self.double()

    def forward(self, x):
        z = self.shared(x)
        self.features = z
        return [h(z) for h in self.heads]


def run(
    name: str,
    memory: str,
    drop_task: int | None = None,
    steps: int = 2,
    features: bool = False,
    **balancer_options,
):
    T = 3
    net = Net(T)
    method = tb.create(name, T, **OPTIONS.get(name, {}), **one_batch(name))
    shared = list(net.shared.parameters())
    balancer = tb.Balancer(method, shared, memory=memory, **balancer_options)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):  # stateful methods (gradvac's EMA, nash) carry state across steps
        net.zero_grad(set_to_none=True)
        x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
        losses: list = [(out - t).pow(2).mean() + 0.1 for t, out in enumerate(net(x))]
        if drop_task is not None:
            losses[drop_task] = None
        info = balancer.backward(losses, features=net.features if features else None)
    grads = [p.grad.clone() if p.grad is not None else None for p in net.parameters()]
    return grads, info


@pytest.mark.parametrize("name", GRAMIAN_METHODS)
def test_gramian_memory_gives_the_full_jacobian_update(name):
    for drop in (None, 1):
        full, info_full = run(name, "jacobian", drop)
        streamed, info_streamed = run(name, "gramian", drop)
        for a, b in zip(full, streamed):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(info_streamed.weights, info_full.weights, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(info_streamed.cosines, info_full.cosines)


@pytest.mark.parametrize("name", ["mgda", "imtl", "graddrop"])
@pytest.mark.parametrize("features", [False, True])
def test_batched_task_backward_gives_the_loop_update(name, features):
    for drop in (None, 0):
        loop, info_loop = run(name, "jacobian", drop)
        batched, info_batched = run(
            name, "jacobian", drop, features=features, task_backward="batched"
        )
        for a, b in zip(loop, batched):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
        if info_loop.cosines is not None:
            torch.testing.assert_close(info_batched.cosines, info_loop.cosines)


def test_streamed_gramian_is_exactly_symmetric():
    # GradientMethod.solve takes a symmetric Gramian (as solvers.gramian returns); blocked
    # float64 products of the parameter blocks differ from their transpose in the last bits.
    from taskbalance.balancing.streaming import gramian_by_parameter

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(30, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
    heads = [nn.Linear(64, 1) for _ in range(5)]
    z = trunk(torch.randn(16, 30))
    losses = [h(z).pow(2).mean() for h in heads]
    shared = list(trunk.parameters())
    G = gramian_by_parameter(losses, None, shared)
    assert torch.equal(G, G.T)
    J = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(L, shared, retain_graph=True)])
            for L in losses
        ]
    ).double()
    torch.testing.assert_close(G, J @ J.T, rtol=1e-6, atol=1e-12)


def test_methods_that_need_J_or_rep_mode_are_refused_clearly():
    net = Net(3)
    shared = list(net.shared.parameters())
    with pytest.raises(ValueError, match="'graddrop' needs the per-task gradients themselves"):
        tb.Balancer(tb.create("graddrop", 3), shared, memory="gramian")
    with pytest.raises(ValueError, match="param mode"):
        tb.Balancer(tb.create("mgda", 3), shared, mode="rep", memory="gramian")
    with pytest.raises(ValueError, match="memory must be one of"):
        tb.Balancer(tb.create("mgda", 3), shared, memory="low")


class DeepTrunk(nn.Module):
    """Many equal layers: J is large, each parameter small."""

    def __init__(self, num_tasks: int, depth: int = 8, width: int = 256) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.Tanh()]
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(num_tasks))

    def forward(self, x):
        z = self.shared(x)
        return [h(z).pow(2).mean() for h in self.heads]


def test_gramian_memory_peak_is_bounded_by_one_parameter_per_task(peak_memory):
    T = 8
    net = DeepTrunk(T)
    shared = list(net.shared.parameters())
    largest = max(p.numel() for p in shared) * 4
    J_bytes = T * sum(p.numel() for p in shared) * 4
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    losses = net(x)
    floor = peak_memory(lambda: sum(losses).backward())
    net.zero_grad(set_to_none=True)
    balancer = tb.Balancer(tb.create("upgrad", T), shared, memory="gramian")
    losses = net(x)
    peak = peak_memory(lambda: balancer.backward(losses))
    assert peak <= floor + 3 * T * largest, (peak / J_bytes, floor / J_bytes)
    assert peak < 0.5 * J_bytes
