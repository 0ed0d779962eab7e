"""GradNorm's step with the heads' views: the last shared layer's gradient of the combined
loss is ``Σ_t c_t ∇_W L_t`` from the norm pass (by linearity), not a second weight gradient.

Checked against the plain path (no features: T backwards from each task's loss to W, then one
backward of the combined loss, autograd computing every gradient itself)."""

from __future__ import annotations

import pytest
import torch
from _typed import tensor_attr
from torch import nn

import taskbalance as tb

NAMES = ("a", "b", "c")


class ConvNet(nn.Module):
    """A 2-conv shared trunk (the last conv W with a bias, then a ReLU) and a conv head per task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        )
        self.heads = nn.ModuleDict({n: nn.Conv2d(4, 1, 1) for n in NAMES})
        self.head_inputs: dict[str, torch.Tensor] = {}

    @property
    def last(self) -> nn.Conv2d:
        conv = self.shared[2]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def last_parameters(self) -> list[nn.Parameter]:
        return list(self.last.parameters())  # the weight, then the bias

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.shared(x)
        self.head_inputs = {n: z.view_as(z) for n in NAMES}
        return {n: self.heads[n](self.head_inputs[n]) for n in NAMES}


def run(
    views: bool,
    missing: tuple[str, ...] = (),
    with_bias: bool = False,
    steps: int = 2,
    task_backward: str = "loop",
):
    """Every gradient (the network's, the input's, GradNorm's weights') and the norms after
    ``steps`` steps (each step moves GradNorm's weights by its gradient)."""
    net = ConvNet()
    method = tb.create("gradnorm", len(NAMES))
    last = net.last_parameters() if with_bias else None
    balancer = tb.Balancer(
        method,
        list(net.shared.parameters()),
        last_shared_parameters=last,
        task_backward=task_backward,
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)
        # The input requires grad: a leaf below the features that is no shared parameter
        # still receives its gradient from the backward through the trunk.
        x = torch.randn(4, 2, 5, 5, generator=gen).requires_grad_(True)
        out = net(x)
        losses = {
            n: None if n in missing else (out[n] - 0.3 * i).pow(2).mean() * (i + 1)
            for i, n in enumerate(NAMES)
        }
        info = balancer.backward(losses, features=net.head_inputs if views else None)
        weights = tensor_attr(method, "weights")
        assert weights.grad is not None
        with torch.no_grad():
            weights -= 0.2 * weights.grad
    grads = {name: p.grad for name, p in net.named_parameters()}
    return grads, x.grad, weights.detach().clone(), info.grad_norms


@pytest.mark.parametrize("task_backward", ["loop", "batched"])
@pytest.mark.parametrize(
    ("missing", "with_bias"), [((), False), (("b",), False), ((), True), (("a",), True)]
)
def test_views_path_writes_what_the_plain_path_writes(missing, with_bias, task_backward):
    plain = run(False, missing, with_bias)
    fast = run(True, missing, with_bias, task_backward=task_backward)
    for name, g in plain[0].items():
        other = fast[0][name]
        assert (g is None) == (other is None), name
        if g is not None:
            torch.testing.assert_close(other, g, rtol=1e-5, atol=1e-7, msg=name)
    for a, b in zip(plain[1:], fast[1:]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    if missing:  # an absent task: no norm, and its head receives nothing
        assert fast[3][NAMES.index(missing[0])] == 0
        assert fast[0][f"heads.{missing[0]}.weight"] is None


@pytest.mark.parametrize(("task_backward", "calls"), [("loop", 3), ("batched", 1)])
def test_last_shared_gradient_is_computed_once_per_task(task_backward, calls):
    # The hook on W fires each time autograd produces W's gradient: in the norm pass once per
    # task (loop), or once for all (batched: one logical call under vmap); the trunk backward
    # of the combined loss asks for it no more (it did: one call more).
    net = ConvNet()
    method = tb.create("gradnorm", len(NAMES))
    shared = list(net.shared.parameters())
    balancer = tb.Balancer(method, shared, task_backward=task_backward)
    seen: list[torch.Size] = []
    net.last.weight.register_hook(lambda g: seen.append(g.shape))
    out = net(torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(1)))
    losses = {n: out[n].pow(2).mean() for n in NAMES}
    balancer.backward(losses, features=net.head_inputs)
    assert seen == [net.last.weight.shape] * calls
    assert all(p.grad is not None for p in net.last_parameters())


def test_a_last_shared_parameter_listed_twice_is_refused():
    # Listed twice (e.g. two tied layers' weights, one Parameter), GradNorm's step with the
    # features wrote Σ_t c_t g_t into W once per listing: W's gradient doubled, and the norms
    # counted W twice on both paths. One clear error at construction instead.
    net = ConvNet()
    w, b = net.last_parameters()
    with pytest.raises(ValueError, match="same parameter more than once"):
        tb.Balancer(
            tb.create("gradnorm", len(NAMES)),
            list(net.shared.parameters()),
            last_shared_parameters=[w, b, w],
        )


class TiedNet(ConvNet):
    """ConvNet whose head of task a also reads the last shared conv's weight W (tied)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        self.z = self.head_inputs["a"]._base  # the shared features the views are of
        tied = torch.einsum("nchw,oc->nohw", self.head_inputs["a"], self.last.weight[:, :, 1, 1])
        return {**out, "a": out["a"] + 0.1 * tied.sum(dim=1, keepdim=True)}


def _tied_step(
    method: str, mode: str, features: str | None, task_backward: str = "loop"
) -> dict[str, torch.Tensor]:
    net = TiedNet()
    shared = list(net.shared.parameters())
    balancer = tb.Balancer(tb.create(method, len(NAMES)), shared, mode, task_backward=task_backward)
    out = net(torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(1)))
    losses = {n: (out[n] - 0.3 * i).pow(2).mean() * (i + 1) for i, n in enumerate(NAMES)}
    given = {"views": net.head_inputs, "shared": net.z, None: None}[features]
    balancer.backward(losses, features=given)
    return {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("features", ["views", "shared"])
def test_a_weight_tied_between_a_head_and_the_trunk_gets_the_plain_update(features):
    # W's gradient from a head pass already runs through the features: with the step's backward
    # from the features it was counted twice (shared features: W off by ~0.07 at step 1), or,
    # with views, the trunk's graph was freed by the head pass (autograd's "backward through the
    # graph a second time"). GradNorm then takes the plain path: the same update.
    plain = _tied_step("gradnorm", "param", None)
    fast = _tied_step("gradnorm", "param", features)
    assert plain.keys() == fast.keys()
    for name, g in plain.items():
        torch.testing.assert_close(fast[name], g, rtol=1e-6, atol=1e-8, msg=name)


@pytest.mark.parametrize("features", ["views", "shared"])
@pytest.mark.parametrize(("mode", "task_backward"), [("rep", "loop"), ("param", "batched")])
def test_a_step_through_the_features_refuses_a_tied_weight(features, mode, task_backward):
    with pytest.raises(ValueError, match=r"tied between a head and the shared part.*mode='param'"):
        _tied_step("mgda", mode, features, task_backward)


def test_last_shared_parameters_outside_the_shared_part_are_refused():
    # A head's weight given as the last shared layer: the path without features measured its
    # gradient, the path with the features (the Trainer's) left it out without a word, so
    # GradNorm's norms, and then its weights, depended on whether features were passed.
    net = ConvNet()
    head = net.heads["a"].weight
    assert isinstance(head, nn.Parameter)
    with pytest.raises(ValueError, match=r"1 parameter\(s\) not among shared_parameters"):
        tb.Balancer(
            tb.create("gradnorm", len(NAMES)),
            list(net.shared.parameters()),
            last_shared_parameters=[*net.last_parameters(), head],
        )


def test_a_last_shared_layer_above_the_features_is_refused_with_features():
    # A shared parameter applied after the features (added to every head's output) given as
    # the last shared layer: no backward from the features reaches it, so the step through the
    # features cannot measure GradNorm's norms; refused, naming the fix (no features works).
    torch.manual_seed(0)
    trunk = nn.Linear(3, 4)
    post = nn.Parameter(torch.zeros(1))
    heads = [nn.Linear(4, 1) for _ in range(2)]

    def losses_and_features() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        z = trunk(torch.ones(5, 3))
        return {f"t{i}": (h(z) + post - i).pow(2).mean() for i, h in enumerate(heads)}, z

    balancer = tb.Balancer(
        tb.create("gradnorm", 2), [*trunk.parameters(), post], last_shared_parameters=[post]
    )
    losses, z = losses_and_features()
    with pytest.raises(ValueError, match=r"does not lie below the features passed to backward"):
        balancer.backward(losses, features=z)
    losses, _ = losses_and_features()
    info = balancer.backward(losses)  # the plain path measures the norms at post
    # |dL_t/dpost| = |2 mean(h_t(z) + post - t)|, computed directly
    with torch.no_grad():
        z = trunk(torch.ones(5, 3))
        expected = [abs(2 * float((h(z) + post - i).mean())) for i, h in enumerate(heads)]
    assert info.grad_norms is not None
    assert info.grad_norms.tolist() == pytest.approx(expected, rel=1e-5)
