"""Per-task head inputs (each head reads its own view of the shared features): one backward
gives every task's feature gradient, with the same update as one backward per task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import taskbalance as tb
from taskbalance.balancing import rows as rows_module
from taskbalance.balancing.rows import TaskRows
from taskbalance.balancing.solvers import combine, gramian

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
                    p -= 0.05 * p.grad
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


def test_task_rows_gramian_and_combination_equal_those_of_the_stacked_matrix(monkeypatch):
    monkeypatch.setattr(rows_module, "CHUNK_ELEMENTS", 6)  # chunks of 1024 columns: many
    gen = torch.Generator().manual_seed(0)
    feats = [torch.zeros(3, 700), torch.zeros(1500)]
    grads = [
        [torch.randn(3, 700, generator=gen), torch.randn(1500, generator=gen)],
        [None, torch.randn(1500, generator=gen) * 1e3],  # task 1 does not reach feature 0
        [torch.randn(3, 700, generator=gen), None],
    ]
    rows = TaskRows(grads, feats)
    J = np.zeros((3, 3600))
    for t, row in enumerate(grads):
        if row[0] is not None:
            J[t, :2100] = row[0].reshape(-1).double().numpy()
        if row[1] is not None:
            J[t, 2100:] = row[1].double().numpy()
    np.testing.assert_allclose(rows.stack().double().numpy(), J)
    np.testing.assert_allclose(gramian(rows).numpy(), J @ J.T, rtol=1e-5)
    w = torch.tensor([0.5, -2.0, 0.25])
    np.testing.assert_allclose(
        combine(w, rows).double().numpy(), w.double().numpy() @ J, rtol=1e-5, atol=1e-3
    )
    cot = rows.feature_cotangents()
    assert [list(c.shape) for c in cot] == [[3, 3, 700], [3, 1500]]
    np.testing.assert_allclose(cot[0].reshape(3, -1).double().numpy(), J[:, :2100])


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
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)
    torch.manual_seed(0)
    detached = MultiTaskModel(nn.Linear(4, 5), {"a": nn.Linear(5, 1)}, rep_detach=True)
    detached(torch.randn(2, 4))
    assert detached.head_inputs is None  # heads read the detached leaf itself
