"""Double sampling (MoDo, SDMGrad with sampling="independent"): the update from three
independent sub-batches against numpy re-implementations of the papers' formulas on the same
sub-Jacobians (computed here with autograd, part by part), the split of a batch into disjoint
parts, state_dict round trips, and the settings that refuse it with an error naming the fix.

Formulas (row convention, J_k = [T, P] per-task gradients of part k):
* MoDo (Chen et al. 2023, Algorithm 1; LibMTL MoDo.py at commit 7a2cbe2):
  λ ← Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ)), d = J₃ᵀ λ.
* SDMGrad (Xiao et al. 2023; LibMTL SDMGrad.py at commit 8bc7605): A = J_ξ J_ξ'ᵀ / s² with
  s = mean_t sqrt(max(A_tt, 0)); n_iter heavy-ball projected steps on w with gradient
  A (w + λ/n·1); d = (J_ζᵀ w + λ mean_t J_ζ[t]) / (1 + λ). Here ξ, ξ', ζ = parts 1, 2, 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _typed import gradient_method, tensor_attr
from torch import nn

import taskbalance as tb
from taskbalance.balancing.independent_step import check_independent_setup
from taskbalance.training.loaders import split_batch


def proj_simplex(v: np.ndarray) -> np.ndarray:
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    r = np.nonzero(u * np.arange(1, len(v) + 1) > css - 1)[0][-1]
    return np.maximum(v - (css[r] - 1) / (r + 1), 0.0)


def modo_reference(Js, lam, gamma=1e-3, rho=0.1):
    J1, J2, J3 = Js
    lam = proj_simplex(lam - gamma * (J1 @ (J2.T @ lam) + rho * lam))
    return J3.T @ lam, lam


def sdmgrad_reference(Js, w, lamda=0.3, n_iter=20, lr=10.0, momentum=0.5):
    zeta, xi1, xi2 = Js[2], Js[0], Js[1]
    GG = xi1 @ xi2.T
    scale = np.sqrt(np.maximum(np.diag(GG), 0)).mean()
    GG = GG / scale**2
    buf = None
    for _ in range(n_iter):
        g = GG @ w + lamda * GG.mean(axis=1)
        buf = g if buf is None else momentum * buf + g
        w = proj_simplex(w - lr * buf)
    return (zeta.T @ w + lamda * zeta.mean(axis=0)) / (1 + lamda), w


REFERENCES = {"modo": modo_reference, "sdmgrad": sdmgrad_reference}


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_aggregate_independent_equals_the_papers_formula_over_steps(name):
    rng = np.random.default_rng(0)
    T = 3
    method = gradient_method(name, T, **({"gamma": 0.05} if name == "modo" else {}))
    ref = REFERENCES[name]
    state = np.full(T, 1.0 / T)
    for _ in range(3):  # the weights carry over between steps
        # samples of one true J (their cross-Gramian estimates its Gramian), rows of mixed scale
        true = rng.standard_normal((T, 7)) * [[1.0], [3.0], [0.2]]
        Js = [true + 0.5 * rng.standard_normal((T, 7)) * [[1.0], [3.0], [0.2]] for _ in range(3)]
        d = method.aggregate_independent([torch.tensor(J) for J in Js])
        kwargs = {"gamma": 0.05} if name == "modo" else {}
        expected, state = ref(Js, state, **kwargs)
        np.testing.assert_allclose(d.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_the_cross_gramian_is_not_the_single_batch_gramian(name):
    """With J₁ = J₂ = J₃ double sampling reduces to the single-batch rule; with different
    samples it does not (the test would pass for an implementation using J₃ J₃ᵀ otherwise)."""
    rng = np.random.default_rng(1)
    J = torch.tensor(rng.standard_normal((3, 5)) * [[1.0], [4.0], [0.5]])
    single = gradient_method(name, 3, sampling="single").aggregate(J)
    same = gradient_method(name, 3).aggregate_independent([J, J, J])
    torch.testing.assert_close(same, single)
    others = [J + torch.tensor(rng.standard_normal((3, 5))) for _ in range(2)]
    mixed = gradient_method(name, 3).aggregate_independent([*others, J])
    assert not torch.allclose(mixed, single, rtol=1e-3, atol=0)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)])

    def losses(self, x, y):
        z = self.shared(x)
        out = [h(z).squeeze(1) for h in self.heads]
        return {f"t{i}": (o - y[:, i]).pow(2).mean() for i, o in enumerate(out)}


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    # targets far from the untrained outputs: the parts' gradients agree (positive A_tt)
    y = torch.tensor([2.0, -3.0, 1.0], dtype=torch.float64) + x[:, :3]
    return x, y + 0.1 * torch.randn(n, 3, generator=g, dtype=torch.float64)


def sub_jacobians(net, parts):
    """J_k [T, P] of each part, one autograd.grad per task (independently of the Balancer)."""
    shared = list(net.shared.parameters())
    out = []
    for x, y in parts:
        rows = []
        for loss in net.losses(x, y).values():
            grads = torch.autograd.grad(loss, shared, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        out.append(torch.stack(rows).detach().numpy())
    return out


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
@pytest.mark.parametrize("task_backward", ["loop", "batched"])
def test_balancer_step_equals_the_formula_on_the_parts_sub_jacobians(name, task_backward):
    net = Net().double()
    method = tb.create(name, 3, gamma=0.5) if name == "modo" else tb.create(name, 3)
    balancer = tb.Balancer(method, net.shared.parameters(), task_backward=task_backward)
    state = np.full(3, 1.0 / 3)
    for step in range(2):
        x, y = data(seed=step)
        parts = split_batch((x, y), 3)
        Js = sub_jacobians(net, parts)
        net.zero_grad()
        info = balancer.backward_independent([net.losses(*p) for p in parts])
        kwargs = {"gamma": 0.5} if name == "modo" else {}
        expected, state = REFERENCES[name](Js, state, **kwargs)
        assert all(p.grad is not None for p in net.shared.parameters())
        got = torch.cat([p.grad.reshape(-1) for p in net.shared.parameters() if p.grad is not None])
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
        # every head: the mean of its gradients over the parts = the whole batch's gradient
        # (equal parts, mean-reduced losses)
        whole = net.losses(x, y)
        for i, head in enumerate(net.heads):
            want = torch.autograd.grad(whole[f"t{i}"], list(head.parameters()))
            for p, g in zip(head.parameters(), want):
                torch.testing.assert_close(p.grad, g)
        # statistics of the whole batch's gradients: the mean of the three sub-Jacobians
        mean_J = sum(Js) / 3
        assert info.grad_norms is not None
        np.testing.assert_allclose(
            info.grad_norms.numpy(), np.linalg.norm(mean_J, axis=1), rtol=1e-9
        )
        torch.testing.assert_close(info.losses, torch.stack(list(whole.values())).detach())


def test_split_batch_gives_disjoint_parts_that_cover_the_batch():
    x = {"image": torch.arange(20.0).reshape(10, 2), "meta": torch.arange(10)}
    targets = {"a": torch.arange(10) * 10}
    masks = {"a": torch.ones(10, dtype=torch.bool)}
    parts = split_batch((x, targets, masks, "keep"), 3)
    assert [len(p[0]["meta"]) for p in parts] == [4, 3, 3]
    ids = torch.cat([p[0]["meta"] for p in parts])
    assert ids.tolist() == list(range(10))  # disjoint, covering, in order
    for p in parts:
        torch.testing.assert_close(p[1]["a"], p[0]["meta"] * 10)  # rows stay together
        assert p[3] == "keep"
    with pytest.warns(RuntimeWarning, match="batch of 2 sample.*cannot be split into 3"):
        assert split_batch((torch.zeros(2, 1), {"a": torch.zeros(2)}), 3) == []


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_state_dict_round_trip_continues_identically(name):
    nets = [Net().double() for _ in range(2)]
    methods = [tb.create(name, 3), tb.create(name, 3)]
    balancers = [tb.Balancer(m, n.shared.parameters()) for m, n in zip(methods, nets)]
    for step in range(2):
        parts = split_batch(data(seed=step), 3)
        nets[0].zero_grad()
        balancers[0].backward_independent([nets[0].losses(*p) for p in parts])
    state = methods[0].state_dict()
    buffer = "lambdas" if name == "modo" else "simplex_weights"
    assert not torch.allclose(state[buffer], torch.full((3,), 1 / 3, dtype=torch.float64))
    methods[1].load_state_dict(state)
    parts = split_batch(data(seed=7), 3)
    for net, balancer in zip(nets, balancers):
        net.zero_grad()
        balancer.backward_independent([net.losses(*p) for p in parts])
    for a, b in zip(nets[0].shared.parameters(), nets[1].shared.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_settings_without_independent_sampling_are_errors_naming_the_fix():
    net = Net().double()
    shared = list(net.shared.parameters())
    settings: tuple[dict[str, Any], ...] = ({"mode": "rep"}, {"memory": "gramian"})
    for options in settings:
        with pytest.raises(ValueError, match="sampling='single'"):
            tb.Balancer(tb.create("modo", 3), shared, **options)
    with pytest.raises(ValueError, match="distributed step.*sampling='single'"):
        check_independent_setup(tb.create("sdmgrad", 3), "param", "jacobian", True)
    balancer = tb.Balancer(tb.create("modo", 3), shared)
    x, y = data()
    with pytest.raises(ValueError, match="backward_independent.*sampling='single'"):
        balancer.backward(net.losses(x, y))
    with pytest.raises(ValueError, match="3 disjoint parts"):
        balancer.backward_independent([net.losses(x, y)] * 2)
    partial = [net.losses(x, y) for _ in range(3)]
    partial[1]["t2"] = None
    with pytest.raises(ValueError, match=r"\['t2'\].*some parts"):
        balancer.backward_independent(partial)
    single = tb.Balancer(tb.create("modo", 3, sampling="single"), shared)
    with pytest.raises(ValueError, match="one batch a step"):
        single.backward_independent(partial)
    with pytest.raises(ValueError, match="aggregate\\(J\\)"):
        single_batch = gradient_method("sdmgrad", 2, sampling="single")
        single_batch.aggregate_independent([torch.ones(2, 3)] * 3)
    with pytest.raises(ValueError, match="sampling must be one of"):
        tb.create("modo", 2, sampling="double")


def test_a_task_absent_from_every_part_keeps_its_weight():
    net = Net().double()
    method = tb.create("modo", 3, gamma=0.5)
    balancer = tb.Balancer(method, net.shared.parameters())
    parts = [net.losses(*p) for p in split_batch(data(), 3)]
    for p in parts:
        p["t1"] = None
    info = balancer.backward_independent(parts)
    lambdas = tensor_attr(method, "lambdas")
    assert lambdas[1] == 1 / 3  # untouched
    assert info.weights is not None
    assert info.weights[1] == 0 and not info.present[1]
    assert torch.isclose(lambdas[[0, 2]].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_the_trainer_gives_three_disjoint_parts_of_each_batch(monkeypatch):
    """Trainer + MoDo (default sampling='independent'): every step passes the losses of 3
    forward passes over disjoint thirds of the batch (sizes 3, 3, 2 of 8) to
    Balancer.backward_independent; the inputs of the 3 forwards together are the batch."""
    from torch.utils.data import DataLoader

    from taskbalance.models import MultiTaskModel
    from taskbalance.tasks import regression_task
    from taskbalance.training import Trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(18, 4, generator=g)
    samples = [(x[i], {"a": x[i, :1], "b": x[i, 1:2]}) for i in range(18)]
    # a list is a map-style dataset at runtime; torch's stubs ask for a Dataset
    train: DataLoader = DataLoader(samples, batch_size=8, shuffle=False)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Sequential(nn.Linear(4, 6), nn.ReLU()),
                           {"a": nn.Linear(6, 1), "b": nn.Linear(6, 1)})
    seen_inputs: list[torch.Tensor] = []
    calls: list[int] = []
    forward, backward_independent = model.forward, tb.Balancer.backward_independent

    def spy_forward(inputs):
        seen_inputs.append(inputs)
        return forward(inputs)

    def spy_backward(self, parts):
        calls.append(len(parts))
        return backward_independent(self, parts)

    monkeypatch.setattr(model, "forward", spy_forward)
    monkeypatch.setattr(tb.Balancer, "backward_independent", spy_backward)
    tasks = [regression_task("a"), regression_task("b")]
    trainer = Trainer(model, tasks, "modo", train, None, progress=False)
    with pytest.warns(RuntimeWarning, match="batch of 2 sample"):  # the last batch: skipped
        summary = trainer.train_epoch()
    assert calls == [3, 3] and summary["skipped_steps"] == 1 and summary["steps"] == 2
    assert [len(i) for i in seen_inputs] == [3, 3, 2, 3, 3, 2]
    torch.testing.assert_close(torch.cat(seen_inputs), x[:16])  # disjoint, covering, in order


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_a_nan_gradient_in_one_part_names_the_task(nonfinite):
    net = Net().double()
    balancer = tb.Balancer(tb.create("sdmgrad", 3), net.shared.parameters(), nonfinite=nonfinite)
    parts = [net.losses(*p) for p in split_batch(data(), 3)]
    z = net.shared(data()[0][:2])
    parts[1]["t1"] = parts[1]["t1"] + (0.0 * z).abs().sqrt().sum()  # NaN gradient, finite loss
    assert torch.isfinite(parts[1]["t1"])
    if nonfinite == "raise":
        with pytest.raises(ValueError, match="task 't1'.*NaN or Inf"):
            balancer.backward_independent(parts)
        return
    with pytest.warns(RuntimeWarning, match="task 't1'"):
        info = balancer.backward_independent(parts)
    assert info.skipped and balancer.skipped_steps == 1
