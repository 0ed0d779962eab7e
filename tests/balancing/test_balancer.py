"""Balancer: the gradients it writes, checked against per-task autograd computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskbalance as tb
from taskbalance.balancing.base import GradientMethod


class FixedCombination(GradientMethod):
    """Test-only gradient method: d = Σ c_t g_t with fixed coefficients (records its inputs)."""

    def __init__(self, num_tasks: int, coefficients: list[float]) -> None:
        super().__init__(num_tasks)
        self.coefficients = torch.tensor(coefficients, dtype=torch.float64)
        self.seen_J: torch.Tensor | None = None
        self.seen_present: torch.Tensor | None = None

    def _aggregate(self, J, losses, present):
        self.seen_J = J.clone()
        self.seen_present = present
        c = self.coefficients.to(J)
        if present is not None:
            c = c[present]
        self.last_weights = c
        return c @ J


class TwoHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleDict(
            {"a": nn.Linear(5, 1), "b": nn.Linear(5, 2), "c": nn.Linear(5, 1)}
        )
        self.features: torch.Tensor | None = None

    def forward(self, x):
        z = self.shared(x)
        self.features = z
        return {k: h(z) for k, h in self.heads.items()}


def make_losses(net, x):
    out = net(x)
    return {
        "a": (out["a"] - 1.0).pow(2).mean(),
        "b": out["b"].pow(2).mean() * 3.0,
        "c": (out["c"] + x[:, :1]).abs().mean(),
    }


def shared_params(net):
    return list(net.shared.parameters())


def flat_grad(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def current_grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


X = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
COEFS = [0.5, -1.5, 2.0]


def reference_param_mode(coefs):
    net = TwoHeadNet()
    losses = make_losses(net, X)
    J = torch.stack([flat_grad(losses[k], shared_params(net)) for k in "abc"])
    heads = {k: flat_grad(losses[k], list(net.heads[k].parameters())) for k in "abc"}
    return J, torch.tensor(coefs) @ J, heads


def test_param_mode_J_and_written_grads_match_autograd():
    J_ref, d_ref, heads_ref = reference_param_mode(COEFS)
    net = TwoHeadNet()
    method = FixedCombination(3, COEFS)
    balancer = tb.Balancer(method, shared_params(net), mode="param")
    info = balancer.backward(make_losses(net, X))
    torch.testing.assert_close(method.seen_J, J_ref)
    torch.testing.assert_close(current_grads(shared_params(net)), d_ref)
    for k in "abc":  # every head gets exactly its own task's gradient
        torch.testing.assert_close(current_grads(list(net.heads[k].parameters())), heads_ref[k])
    torch.testing.assert_close(info.grad_norms, J_ref.norm(dim=1))
    cos01 = (J_ref[0] @ J_ref[1]) / (J_ref[0].norm() * J_ref[1].norm())
    assert info.cosines is not None
    torch.testing.assert_close(info.cosines[0, 1], cos01)
    torch.testing.assert_close(info.weights, torch.tensor(COEFS))
    assert info.task_names == ("a", "b", "c")


def test_param_mode_accumulates_onto_existing_grads():
    _, d_ref, _ = reference_param_mode(COEFS)
    net = TwoHeadNet()
    for p in shared_params(net):
        p.grad = torch.ones_like(p)
    tb.Balancer(FixedCombination(3, COEFS), shared_params(net)).backward(make_losses(net, X))
    torch.testing.assert_close(current_grads(shared_params(net)), d_ref + 1.0)


def test_rep_mode_uses_feature_gradients_and_backpropagates_direction():
    net = TwoHeadNet()
    losses = make_losses(net, X)
    z = net.features
    assert z is not None
    Jz = torch.stack([flat_grad(losses[k], [z]) for k in "abc"])
    dz = torch.tensor(COEFS) @ Jz
    # Chain rule by hand: the shared grads are (∂z/∂θ)ᵀ dz.
    expected = flat_grad((z * dz.view_as(z)).sum(), shared_params(net))
    heads_ref = {k: flat_grad(losses[k], list(net.heads[k].parameters())) for k in "abc"}

    net2 = TwoHeadNet()
    method = FixedCombination(3, COEFS)
    losses2 = make_losses(net2, X)
    tb.Balancer(method, shared_params(net2), mode="rep").backward(losses2, features=net2.features)
    torch.testing.assert_close(method.seen_J, Jz)
    torch.testing.assert_close(current_grads(shared_params(net2)), expected)
    for k in "abc":
        torch.testing.assert_close(current_grads(list(net2.heads[k].parameters())), heads_ref[k])


def test_absent_task_gets_no_gradient_and_zero_weight():
    net = TwoHeadNet()
    method = FixedCombination(3, COEFS)
    losses = make_losses(net, X)
    losses["b"] = None
    info = tb.Balancer(method, shared_params(net)).backward(losses)
    assert method.seen_J is not None and method.seen_J.shape[0] == 2
    assert method.seen_present is not None
    assert method.seen_present.tolist() == [True, False, True]
    assert all(p.grad is None for p in net.heads["b"].parameters())
    J_ref, _, _ = reference_param_mode(COEFS)
    expected = 0.5 * J_ref[0] + 2.0 * J_ref[2]
    torch.testing.assert_close(current_grads(shared_params(net)), expected)
    assert info.weights is not None and info.weights.tolist() == [0.5, 0.0, 2.0]
    assert info.grad_norms is not None and info.cosines is not None
    assert info.grad_norms[1] == 0 and torch.isfinite(info.cosines).all()


def test_gradient_stats_finite_for_float32_gradients_whose_squares_overflow():
    shared = nn.Parameter(torch.ones(4))
    balancer = tb.Balancer(FixedCombination(2, [1.0, 1.0]), [shared])
    # g_a = 1e20·1, g_b = -3e20·1: ‖g‖² ~ 1e41 overflows float32
    info = balancer.backward({"a": (shared * 1e20).sum(), "b": (shared * -3e20).sum()})
    torch.testing.assert_close(info.grad_norms, torch.tensor([2e20, 6e20]))
    torch.testing.assert_close(info.cosines, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    torch.testing.assert_close(shared.grad, torch.full((4,), -2e20))


def test_loss_method_one_backward_equals_weighted_sum():
    net = TwoHeadNet()
    losses = make_losses(net, X)
    expected = flat_grad(losses["a"] + 2 * losses["b"] + 0.5 * losses["c"], shared_params(net))
    net2 = TwoHeadNet()
    method = tb.create("static", 3, weights=[1.0, 2.0, 0.5])
    info = tb.Balancer(method, shared_params(net2)).backward(make_losses(net2, X))
    torch.testing.assert_close(current_grads(shared_params(net2)), expected)
    assert info.grad_norms is None and info.weights is not None
    assert info.weights.tolist() == [1.0, 2.0, 0.5]


def test_loss_method_with_absent_task_sums_present_only():
    net = TwoHeadNet()
    losses = make_losses(net, X)
    expected = flat_grad(losses["a"] + 0.5 * losses["c"], shared_params(net))
    net2 = TwoHeadNet()
    losses2 = make_losses(net2, X)
    losses2["b"] = None
    method = tb.create("static", 3, weights=[1.0, 2.0, 0.5])
    info = tb.Balancer(method, shared_params(net2)).backward(losses2)
    torch.testing.assert_close(current_grads(shared_params(net2)), expected)
    assert info.weights is not None and info.weights.tolist() == [1.0, 0.0, 0.5]


def test_unreached_shared_parameter_gets_zero_grad_and_frozen_one_is_skipped():
    net = TwoHeadNet()
    unused = nn.Parameter(torch.ones(3))
    tb.Balancer(FixedCombination(3, COEFS), [*shared_params(net), unused]).backward(
        make_losses(net, X)
    )
    assert unused.grad is not None and torch.count_nonzero(unused.grad) == 0
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    balancer = tb.Balancer(FixedCombination(3, COEFS), [*shared_params(net), frozen])
    assert all(p is not frozen for p in balancer.shared)


def test_sequence_and_tensor_losses_are_accepted():
    net = TwoHeadNet()
    losses = make_losses(net, X)
    info = tb.Balancer(tb.create("ew", 3), shared_params(net)).backward(list(losses.values()))
    assert info.task_names == ("task0", "task1", "task2")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, "missing"),
        ({"a": torch.ones(2), "b": torch.tensor(1.0), "c": torch.tensor(1.0)}, "scalar"),
        ({"a": torch.tensor(1.0), "b": torch.tensor(float("nan")), "c": torch.tensor(1.0)}, "'b'"),
        ({"a": torch.tensor(1.0), "b": torch.tensor(float("inf")), "c": torch.tensor(1.0)}, "'b'"),
        ({"a": None, "b": None, "c": None}, "no task has a loss"),
        ({"a": torch.tensor(1), "b": torch.tensor(1.0), "c": torch.tensor(1.0)}, "floating"),
    ],
)
def test_bad_losses_raise_clear_errors(bad, message):
    net = TwoHeadNet()
    balancer = tb.Balancer(tb.create("ew", 3), shared_params(net), task_names=["a", "b", "c"])
    with pytest.raises((ValueError, TypeError), match=message):
        balancer.backward(bad)


def test_constructor_errors():
    net = TwoHeadNet()
    with pytest.raises(ValueError, match="mode"):
        tb.Balancer(tb.create("ew", 3), shared_params(net), mode="feature")
    with pytest.raises(ValueError, match="empty"):
        tb.Balancer(tb.create("ew", 3), [])
    with pytest.raises(TypeError, match="taskbalance.create"):
        tb.Balancer("ew", shared_params(net))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 tasks"):
        tb.Balancer(tb.create("ew", 3), shared_params(net), task_names=["a", "b"])
    balancer = tb.Balancer(FixedCombination(3, COEFS), shared_params(net), mode="rep")
    with pytest.raises(ValueError, match="features"):
        balancer.backward(make_losses(net, X))


def test_registry_errors_name_valid_choices():
    with pytest.raises(ValueError, match="available: .*ew"):
        tb.create("does-not-exist", 2)
    with pytest.raises(ValueError, match="valid options: weights"):
        tb.create("static", 2, weigths=[1, 1])
    with pytest.raises(ValueError, match="one entry per task"):
        tb.create("static", 2, weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        tb.create("static", 2, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=">= 0"):
        tb.create("static", 2, weights=[1.0, float("nan")])
    with pytest.raises(ValueError, match="num_tasks"):
        tb.create("ew", 0)


def test_every_method_has_kind_and_weights_attribute():
    for name in tb.available_methods():
        options = {"weights": [1.0, 1.0]} if name == "static" else {}
        method = tb.create(name, 2, **options)
        assert method.kind in ("loss", "gradient")
        assert method.last_weights is None
        assert tb.method_info(name).paper


@pytest.mark.parametrize("name", ["pcgrad", "graddrop", "gradvac", "rlw"])
def test_seeded_method_resumes_its_random_stream_from_state_dict(name):
    import copy

    J = torch.randn(3, 20, generator=torch.Generator().manual_seed(3))
    L = torch.tensor([1.0, 2.0, 3.0])

    def draw(m):
        if m.kind == "loss":
            m.combine(L)
            return m.last_weights.clone()
        return m.aggregate(J).clone()

    method = tb.create(name, 3, seed=1)
    draw(method)
    saved = copy.deepcopy(method.state_dict())
    expected = [draw(method) for _ in range(3)]
    restored = tb.create(name, 3, seed=123)
    restored.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(expected, [draw(restored) for _ in range(3)]))
