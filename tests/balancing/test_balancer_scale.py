"""The Balancer at scale: linear in T, J held once, refusing what it cannot balance."""

from __future__ import annotations

import pytest
import torch
from _methods import one_batch
from _typed import gradient_method, tensor_attr
from torch import nn

import taskbalance as tb
from taskbalance.balancing import balancer as balancer_module

GRADIENT_METHODS = [n for n in tb.available_methods() if tb.method_info(n).kind == "gradient"]


class CountBackward(torch.autograd.Function):
    """Identity whose backward counts how often a head is traversed."""

    calls: dict[str, int] = {}

    @staticmethod
    def forward(ctx, x, name):  # type: ignore[override]
        ctx.name = name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        CountBackward.calls[ctx.name] = CountBackward.calls.get(ctx.name, 0) + 1
        return grad, None


class ManyHeads(nn.Module):
    def __init__(self, num_tasks: int, width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width))
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(num_tasks))
        self.features: torch.Tensor | None = None

    def forward(self, x):
        z = self.shared(x)
        self.features = z
        return [CountBackward.apply(h(z), f"head{i}") for i, h in enumerate(self.heads)]


def step(name: str, mode: str, T: int = 5, features: bool = True, **options) -> int:
    net = ManyHeads(T)
    method = tb.create(name, T, **one_batch(name))
    balancer = tb.Balancer(method, list(net.shared.parameters()), mode, **options)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    losses = [(out - 0.5).pow(2).mean() for out in net(x)]
    CountBackward.calls = {}
    balancer.backward(losses, features=net.features if features else None)
    return sum(CountBackward.calls.values())


@pytest.mark.parametrize(
    ("name", "mode", "per_task"),
    [
        ("mgda", "param", 1),  # T backwards, each through its own head only
        ("imtl", "param", 1),  # loss transform (IMTL-L scales): still each task's own loss
        ("mgda", "rep", 1),  # T feature (and head) gradients + one backward from the features
        ("gradnorm", "param", 1),  # the same with the features: norms from a batched pass
    ],
)
def test_each_head_is_traversed_a_constant_number_of_times(name, mode, per_task):
    T = 5
    assert step(name, mode, T) == per_task * T  # not T² (an index into the stacked losses)


def test_without_features_gradnorm_measures_norms_from_each_task_loss():
    T = 5
    assert step("gradnorm", "param", T, features=False) == 2 * T  # T norms + one backward


def test_gradnorm_with_features_writes_what_the_per_task_path_writes():
    T = 4
    results = []
    for features in (False, True):
        net = ManyHeads(T)
        method = tb.create("gradnorm", T)
        balancer = tb.Balancer(method, list(net.shared.parameters()))
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):  # the second step uses weights moved by the first one's norms
            net.zero_grad(set_to_none=True)
            method.zero_grad(set_to_none=True)
            losses = [
                (o - 0.5).pow(2).mean() * (t + 1)
                for t, o in enumerate(net(torch.randn(8, 4, generator=gen)))
            ]
            info = balancer.backward(losses, features=net.features if features else None)
            weights = tensor_attr(method, "weights")
            assert weights.grad is not None
            with torch.no_grad():
                weights -= 0.1 * weights.grad
        assert all(p.grad is not None for p in net.parameters())
        grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
        results.append((grads, info.grad_norms, weights.detach().clone()))
    (g0, n0, w0), (g1, n1, w1) = results
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a)
    torch.testing.assert_close(n1, n0)
    torch.testing.assert_close(w1, w0)


def test_batched_task_backward_with_features_traverses_each_head_once():
    T = 5
    assert step("mgda", "param", T, task_backward="batched") == T


def test_transformed_losses_give_the_same_update_as_autograd_on_the_transform():
    # imtl in param mode: J rows are ∇(e^{s_t} L_t - s_t); with s = 0.3, 0.1, ... check row t.
    T = 3
    net = ManyHeads(T)
    method = gradient_method("imtl", T)
    with torch.no_grad():
        tensor_attr(method, "log_scales").copy_(torch.tensor([0.3, -0.2, 0.1]))
    shared = list(net.shared.parameters())
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    losses = [(out - 0.5).pow(2).mean() for out in net(x)]
    expected = []
    for t, loss in enumerate(losses):
        s = tensor_attr(method, "log_scales").detach()[t]
        grads = torch.autograd.grad(torch.exp(s) * loss - s, shared, retain_graph=True)
        expected.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(expected)
    seen = {}
    original = method.solve

    def spy(G, *args, **kwargs):
        seen["G"] = G
        return original(G, *args, **kwargs)

    method.solve = spy  # type: ignore[method-assign]
    tb.Balancer(method, shared).backward(losses)
    torch.testing.assert_close(seen["G"], (J @ J.T).double(), rtol=1e-5, atol=1e-7)
    # the loss scales receive ∂(Σ_t e^{s_t} L_t - s_t)/∂s_t = e^{s_t} L_t - 1
    L = torch.stack([loss.detach() for loss in losses])
    scales = torch.exp(tensor_attr(method, "log_scales").detach())
    torch.testing.assert_close(method.log_scales.grad, scales * L - 1)


def test_the_gramian_is_computed_once_per_step_and_shared_with_the_statistics(monkeypatch):
    import sys

    from taskbalance.balancing import solvers

    calls = []
    real = solvers.gramian

    def counting(J, *args, **kwargs):
        calls.append(J.shape)
        return real(J, *args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("taskbalance.balancing"):
            if getattr(module, "gramian", None) is real:
                monkeypatch.setattr(module, "gramian", counting)
    assert balancer_module.gramian is counting
    net = ManyHeads(3)
    balancer = tb.Balancer(tb.create("upgrad", 3), list(net.shared.parameters()))
    info = balancer.backward([out.pow(2).mean() for out in net(torch.randn(5, 4))])
    assert len(calls) == 1 and info.cosines is not None


class WideTrunk(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 512))
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))

    def forward(self, x):
        z = self.shared(x)
        return [h(z).pow(2).mean() for h in self.heads]


def test_peak_memory_of_a_param_mode_step_is_J_plus_the_models_own_backward(peak_memory):
    T = 8
    net = WideTrunk(T)
    shared = list(net.shared.parameters())
    P = sum(p.numel() for p in shared)
    J_bytes = T * P * 4
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))

    losses = net(x)
    net.zero_grad(set_to_none=True)
    floor = peak_memory(lambda: sum(losses).backward())  # the model's own backward
    net.zero_grad(set_to_none=True)
    balancer = tb.Balancer(tb.create("mgda", T), shared, track_gradients=True)
    losses = net(x)
    peak = peak_memory(lambda: balancer.backward(losses))
    assert floor >= P * 4  # the measurement sees the parameters' gradients
    assert peak <= 1.1 * J_bytes + floor, (peak / J_bytes, floor / J_bytes)


def nan_gradient_losses(net, x):
    """Three finite losses; the gradient of 'b' is NaN (d√u/du = inf at u = 0, times 0)."""
    out = net(x)
    return {
        "a": out[0].pow(2).mean(),
        "b": (out[1] * 0.0).sqrt().mean() + out[1].mean(),
        "c": out[2].abs().mean(),
    }


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("mode", ["param", "rep"])
def test_a_nan_task_gradient_is_an_error_naming_the_task(name, mode):
    net = ManyHeads(3)
    if mode == "rep" and not getattr(tb.method_info(name).cls, "supports_rep_mode", True):
        with pytest.raises(ValueError, match="mode='param'"):  # per-parameter state (db_mtl…)
            tb.Balancer(tb.create(name, 3), list(net.shared.parameters()), mode)
        return
    method = tb.create(name, 3, **one_batch(name))
    balancer = tb.Balancer(method, list(net.shared.parameters()), mode)
    losses = nan_gradient_losses(net, torch.randn(5, 4))
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="task 'b'.*NaN or Inf"):
        balancer.backward(losses, features=net.features)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.shared.parameters())


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_aggregate_refuses_nan_rows_instead_of_zeroing_them(name):
    J = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J[1, 2] = float("nan")
    with pytest.raises(ValueError, match="row 1.*NaN or Inf"):
        gradient_method(name, 3).aggregate(J)
    J[1, 2] = float("inf")
    with pytest.raises(ValueError, match="row 1.*NaN or Inf"):
        gradient_method(name, 3).aggregate(J)


def test_nonfinite_skip_warns_counts_and_writes_no_shared_gradient():
    net = ManyHeads(3)
    shared = list(net.shared.parameters())
    balancer = tb.Balancer(tb.create("nash_mtl", 3), shared, nonfinite="skip")
    with pytest.warns(RuntimeWarning, match=r"task 'b'.*1 step\(s\) skipped"):
        info = balancer.backward(nan_gradient_losses(net, torch.randn(5, 4)))
    assert info.skipped and info.weights is None and balancer.skipped_steps == 1
    assert all(p.grad is None for p in shared)
    info = balancer.backward([o.pow(2).mean() for o in net(torch.randn(5, 4))])
    assert info.weights is not None
    assert not info.skipped and torch.isfinite(info.weights).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in shared)
    with pytest.raises(ValueError, match="nonfinite"):
        tb.Balancer(tb.create("mgda", 3), shared, nonfinite="ignore")


def test_rep_mode_refuses_features_of_an_earlier_forward():
    net = ManyHeads(3)
    balancer = tb.Balancer(tb.create("mgda", 3), list(net.shared.parameters()), mode="rep")
    net(torch.randn(5, 4))
    stale = net.features
    losses = [o.pow(2).mean() for o in net(torch.randn(5, 4))]
    with pytest.raises(ValueError, match="task 'task0' does not depend on the features"):
        balancer.backward(losses, features=stale)


@pytest.mark.parametrize("name", ["ew", "uw", "mgda"])
def test_losses_that_do_not_require_grad_are_refused(name):
    net = ManyHeads(2)
    balancer = tb.Balancer(tb.create(name, 2), list(net.shared.parameters()))
    out = net(torch.randn(5, 4))
    with torch.no_grad():
        frozen = out[1].pow(2).mean()
    with pytest.raises(ValueError, match="task 'task1' does not require grad"):
        balancer.backward([out[0].pow(2).mean(), frozen])


def test_finite_check_of_J_tells_overflowing_sums_from_nonfinite_entries():
    from taskbalance.balancing.solvers import first_nonfinite_row_of

    J = torch.full((3, 40_000), 3e38)  # finite entries whose row sums overflow float32
    assert first_nonfinite_row_of(J) is None
    J[2, 39_999] = float("nan")  # in the last column chunk
    J[1, 5] = float("-inf")
    assert first_nonfinite_row_of(J) == 1


@pytest.mark.parametrize("name", ["mgda", "upgrad", "cagrad", "pcgrad", "imtl_g"])
def test_weights_from_the_gramian_reproduce_aggregate(name):
    J = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    options = {"seed": 0} if name == "pcgrad" else {}
    d = gradient_method(name, 4, **options).aggregate(J)
    w = gradient_method(name, 4, **options).weights(J @ J.T)
    assert w.dtype == torch.float64
    torch.testing.assert_close(w @ J, d)


def test_weights_of_a_method_that_needs_J_is_a_clear_error():
    with pytest.raises(ValueError, match="needs the per-task gradients themselves"):
        gradient_method("graddrop", 2).weights(torch.eye(2))
    with pytest.raises(ValueError, match=r"shape \[2, 2\]"):
        gradient_method("mgda", 2).weights(torch.eye(3))


def test_min_norm_weights_refuses_a_nonfinite_gramian_instead_of_zeroing_it():
    from taskbalance.balancing.solvers import min_norm_weights

    G = torch.eye(3, dtype=torch.float64)
    G[1, 2] = G[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        min_norm_weights(G)
