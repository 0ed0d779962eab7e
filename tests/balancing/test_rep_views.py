"""Per-task head inputs (each head reads its own view of the shared features): one backward
gives every task's feature gradient, with the same update as one backward per task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import taskbalance as tb

NAMES = ("a", "b", "c")


class Net(nn.Module):
    """A shared trunk and one two-layer head per task; ``head_inputs`` are the heads' views."""

    def __init__(self, shared_extra: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5))
        self.heads = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)) for n in NAMES}
        )
        # A task parameter read by two tasks' heads (not shared by all): its gradient is a sum.
        self.extra = nn.Parameter(torch.tensor(0.7)) if shared_extra else None
        self.features: torch.Tensor | None = None
        self.head_inputs: dict[str, torch.Tensor] = {}

    def forward(self, x):
        z = self.shared(x)
        self.features = z
        self.head_inputs = {n: z.view_as(z) for n in NAMES}
        out = {n: self.heads[n](self.head_inputs[n]) for n in NAMES}
        if self.extra is not None:
            out["a"] = out["a"] * self.extra
            out["b"] = out["b"] + self.extra
        return out


def losses_of(out, missing=()):
    return {
        n: None if n in missing else (out[n] - 0.3 * i).pow(2).mean() for i, n in enumerate(NAMES)
    }


def run(name, views, mode="rep", steps=2, missing=(), shared_extra=False, **options):
    """Gradients of every parameter and the last StepInfo after ``steps`` steps."""
    net = Net(shared_extra)
    method = tb.create(name, len(NAMES))
    balancer = tb.Balancer(method, list(net.shared.parameters()), mode, **options)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # methods that draw random numbers (graddrop) draw the same ones
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        losses = losses_of(net(torch.randn(8, 4, generator=gen)), missing)
        info = balancer.backward(losses, features=net.head_inputs if views else net.features)
        with torch.no_grad():
            for p in [*net.parameters(), *method.parameters()]:
                if p.grad is not None:
                    p.sub_(0.05 * p.grad)
    return [None if p.grad is None else p.grad.clone() for p in net.parameters()], info


def assert_same(a, b):
    (ga, ia), (gb, ib) = a, b
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    for field in ("weights", "grad_norms", "cosines"):
        x, y = getattr(ia, field), getattr(ib, field)
        if x is not None:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "pcgrad", "imtl", "graddrop", "nash_mtl"])
def test_rep_mode_with_per_task_views_matches_one_backward_per_task(name):
    assert_same(run(name, views=False), run(name, views=True))


def test_rep_mode_with_views_and_an_absent_task():
    assert_same(run("mgda", False, missing=("b",)), run("mgda", True, missing=("b",)))


@pytest.mark.parametrize("shared_extra", [False, True])
def test_gradnorm_with_views_matches_the_shared_features_path(shared_extra):
    # shared_extra: a head parameter reached by two tasks; GradNorm's per-task coefficients
    # then need one backward per task (the fallback), still from the views.
    base = run("gradnorm", False, mode="param", steps=3, shared_extra=shared_extra)
    assert_same(base, run("gradnorm", True, mode="param", steps=3, shared_extra=shared_extra))


def test_batched_param_mode_with_views_matches_the_loop():
    base = run("mgda", False, mode="param")
    assert_same(base, run("mgda", True, mode="param", task_backward="batched"))


def test_per_task_features_are_checked():
    net = Net()
    balancer = tb.Balancer(tb.create("mgda", 3), list(net.shared.parameters()), "rep")
    x = torch.randn(8, 4)
    losses = losses_of(net(x))
    views = dict(net.head_inputs)
    with pytest.raises(ValueError, match=r"one entry per task.*missing \['c'\]"):
        balancer.backward(losses, features={"a": views["a"], "b": views["b"]})
    z = net.features
    assert z is not None
    with pytest.raises(ValueError, match="task 'a'.*view of the same shared features"):
        balancer.backward(losses, features={"a": z * 1, "b": views["b"], "c": views["c"]})
    other = z.detach().clone().requires_grad_(True)
    with pytest.raises(ValueError, match="task 'c'.*view of the same shared features"):
        balancer.backward(losses, features={**views, "c": other.view_as(other)})
    with pytest.raises(ValueError, match="tasks 'a' and 'b' were given the same tensor"):
        balancer.backward(losses, features={**views, "b": views["a"]})


class TwoFeatureNet(nn.Module):
    """Two shared feature tensors; task ``c`` reads only the first (a zero block of its row)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.ModuleList([nn.Linear(4, 7), nn.Linear(4, 3)])
        self.heads = nn.ModuleDict({n: nn.Linear(7 if n == "c" else 10, 1) for n in NAMES})

    def forward(self, x):
        z1 = torch.tanh(self.shared[0](x))  # [b, 7]
        z2 = self.shared[1](x).pow(2)  # [b, 3]
        self.features = (z1, z2)
        self.head_inputs = {n: (z1.view_as(z1), z2.view_as(z2)) for n in NAMES}
        out = {}
        for n, (a, b) in self.head_inputs.items():
            out[n] = self.heads[n](a if n == "c" else torch.cat([a, b], dim=1))
        return out


@pytest.mark.parametrize("views", [False, True])
def test_rep_rows_norms_cosines_and_update_equal_per_task_gradients(views):
    # Independent reference: each task's gradient w.r.t. (z1, z2) by its own autograd call,
    # stacked in float64 (numpy); the step's statistics come from the rows the Balancer wrote
    # into its reused buffer, and its update is the backward of Σ w_t g_t from the features.
    # Three steps, the second without task 'b' (fewer rows in the reused buffer), so rows
    # left from an earlier step would show.
    net = TwoFeatureNet()
    shared = list(net.shared.parameters())
    balancer = tb.Balancer(tb.create("mgda", 3), shared, "rep")
    gen = torch.Generator().manual_seed(4)
    for missing in ((), ("b",), ()):
        net.zero_grad(set_to_none=True)
        x = torch.randn(5, 4, generator=gen) * 2
        losses = losses_of(net(x), missing)
        z1, z2 = net.features
        present = [n for n in NAMES if n not in missing]
        rows, param_grads = [], []
        for n in present:
            g1, g2 = torch.autograd.grad(losses[n], (z1, z2), retain_graph=True, allow_unused=True)
            g2 = torch.zeros_like(z2) if g2 is None else g2
            rows.append(np.concatenate([g1.double().numpy().ravel(), g2.double().numpy().ravel()]))
            shared_grads = torch.autograd.grad(
                losses[n], shared, retain_graph=True, allow_unused=True
            )
            param_grads.append(
                [
                    np.zeros(p.shape) if g is None else g.double().numpy()
                    for p, g in zip(shared, shared_grads)
                ]
            )
        J = np.stack(rows)
        info = balancer.backward(losses, features=net.head_inputs if views else net.features)
        idx = [NAMES.index(n) for n in present]
        norms = np.sqrt(np.diag(J @ J.T))
        assert info.grad_norms is not None and info.cosines is not None
        assert info.weights is not None
        np.testing.assert_allclose(info.grad_norms.numpy()[idx], norms, rtol=1e-5)
        cos = (J @ J.T) / np.outer(norms, norms)
        np.testing.assert_allclose(info.cosines.numpy()[np.ix_(idx, idx)], cos, atol=1e-6)
        # The update on the shared parameters: Σ_t w_t ∇_θ L_t (the chain rule through z).
        w = info.weights.double().numpy()[idx]
        for k, p in enumerate(shared):
            expected = sum(w_t * grads[k] for w_t, grads in zip(w, param_grads))
            assert p.grad is not None
            np.testing.assert_allclose(p.grad.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_rep_rows_buffer_is_reused_across_steps():
    net = Net()
    balancer = tb.Balancer(tb.create("mgda", 3), list(net.shared.parameters()), "rep")
    pointers = set()
    for _ in range(3):
        net.zero_grad(set_to_none=True)
        balancer.backward(losses_of(net(torch.randn(8, 4))), features=net.head_inputs)
        assert balancer._rows._data is not None
        pointers.add(balancer._rows._data.data_ptr())
    assert len(pointers) == 1


def test_multitask_model_hands_each_head_a_view_and_the_balancer_takes_them():
    from taskbalance.models import MultiTaskModel

    grads = []
    for views in (False, True):
        torch.manual_seed(0)
        model = MultiTaskModel(
            nn.Sequential(nn.Linear(4, 5), nn.Tanh()), {n: nn.Linear(5, 1) for n in NAMES}
        )
        out = model(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)))
        inputs = model.head_inputs
        assert inputs is not None and list(inputs) == list(NAMES)
        for v in inputs.values():
            assert v._base is model.features  # a view of the features, one per head
        balancer = tb.Balancer(tb.create("mgda", 3), list(model.shared_parameters()), "rep")
        balancer.backward(losses_of(out), features=inputs if views else model.features)
        assert all(p.grad is not None for p in model.parameters())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)
    torch.manual_seed(0)
    detached = MultiTaskModel(nn.Linear(4, 5), {"a": nn.Linear(5, 1)}, rep_detach=True)
    detached(torch.randn(2, 4))
    assert detached.head_inputs is None  # heads read the detached leaf itself
