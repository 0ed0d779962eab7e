"""A frozen shared part: the Balancer balances over the shared parameters that require grad at
the time of the step, and with none of them a step trains the heads alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskbalance as tb


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.low = nn.Linear(4, 6)
        self.high = nn.Linear(6, 5)
        self.heads = nn.ModuleList([nn.Linear(5, 1) for _ in range(2)])

    def shared(self) -> list[nn.Parameter]:
        return [*self.low.parameters(), *self.high.parameters()]

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.tanh(self.high(torch.tanh(self.low(x))))
        targets = (x.sum(1, keepdim=True), -x[:, :1] * 3)
        pairs = enumerate(zip(self.heads, targets, strict=True))
        return {f"t{i}": (h(z) - y).pow(2).mean() for i, (h, y) in pairs}


X = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))


def two_task_min_norm(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Sener & Koltun's closed form for two tasks: a g1 + (1 - a) g2 of least norm."""
    diff = g1 - g2
    a = float(torch.clamp((g2 - g1) @ g2 / (diff @ diff), 0.0, 1.0))
    return a * g1 + (1 - a) * g2


def test_frozen_layer_is_skipped_and_the_rest_is_balanced() -> None:
    net = Net().double()
    balancer = tb.Balancer(tb.create("mgda", 2), net.shared())
    balancer.backward(net.losses(X.double()))  # built and stepped with everything trainable
    net.zero_grad(set_to_none=True)
    for p in net.low.parameters():
        p.requires_grad_(False)
    before = [p.detach().clone() for p in net.low.parameters()]

    losses = net.losses(X.double())
    active = list(net.high.parameters())
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, active, retain_graph=True)])
        for loss in losses.values()
    ]
    expected = two_task_min_norm(*rows)
    balancer.backward(losses)
    got = torch.cat([p.grad.flatten() for p in active if p.grad is not None])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in net.low.parameters())

    torch.optim.SGD(net.parameters(), lr=0.5).step()
    for p, b in zip(net.low.parameters(), before, strict=True):
        assert torch.equal(p, b)  # bitwise unchanged


@pytest.mark.parametrize(("method", "mode"), [("mgda", "param"), ("mgda", "rep"), ("uw", "param")])
def test_all_shared_frozen_trains_each_head_on_its_own_loss(method: str, mode: str) -> None:
    net = Net().double()
    balancer = tb.Balancer(tb.create(method, 2), net.shared(), mode=mode)
    for p in net.shared():
        p.requires_grad_(False)
    before = [p.detach().clone() for p in net.shared()]
    losses = net.losses(X.double())
    if method == "uw":  # UW: 1/2 e^{-s} L with s = 0 at the start
        expected = [
            torch.autograd.grad(0.5 * loss, list(h.parameters()), retain_graph=True)
            for loss, h in zip(losses.values(), net.heads)
        ]
    else:  # each head its own task's gradient
        expected = [
            torch.autograd.grad(loss, list(h.parameters()), retain_graph=True)
            for loss, h in zip(losses.values(), net.heads)
        ]
    info = balancer.backward(losses, features=None)
    for head, grads in zip(net.heads, expected, strict=True):
        for p, g in zip(head.parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad, g)
    assert info.weights is not None and info.weights.shape == (2,)
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    for p, b in zip(net.shared(), before, strict=True):
        assert torch.equal(p, b)


def test_gradnorm_refuses_a_frozen_shared_part() -> None:
    net = Net()
    for p in net.shared():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="every shared parameter is frozen"):
        tb.Balancer(tb.create("gradnorm", 2), net.shared())
