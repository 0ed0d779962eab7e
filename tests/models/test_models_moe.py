"""MMoE, CGC, PLE, DSelect-K and LTB: shapes, exact parameter split, gates, Balancer steps."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from _methods import one_batch
from _typed import tensor_attr
from torch import Tensor, nn

import taskbalance
from taskbalance.balancing.base import GradientMethod
from taskbalance.models import CGC, LTB, PLE, DSelectK, DSelectKGate, MMoE
from taskbalance.models.dselect_k import smooth_step
from taskbalance.models.experts import mlp
from taskbalance.models.ltb import BranchLogits
from taskbalance.models.multitask import MultiTaskNetwork

D_IN, D_EXP = 6, 4
TASKS3 = ("a", "b", "c")


def towers(tasks=TASKS3, width: int = D_EXP) -> dict[str, nn.Module]:
    # tanh towers: no dead units, so every path carries a gradient
    return {t: nn.Sequential(nn.Linear(width, 3), nn.Tanh(), nn.Linear(3, 1)) for t in tasks}


def make_mmoe(tasks=TASKS3) -> MMoE:
    return MMoE(D_IN, towers(tasks), num_experts=3, expert_dim=D_EXP)


def make_mmoe_bias(tasks=TASKS3) -> MMoE:
    return MMoE(D_IN, towers(tasks), num_experts=3, expert_dim=D_EXP, gate_bias=True)


def make_dselect(tasks=TASKS3) -> DSelectK:
    return DSelectK(D_IN, towers(tasks), num_experts=4, k=2, expert_dim=D_EXP)


def make_cgc(tasks=TASKS3) -> CGC:
    return CGC(D_IN, towers(tasks), shared_experts=2, task_experts=1, expert_dim=D_EXP)


def make_ple(tasks=TASKS3, levels: int = 3) -> PLE:
    return PLE(
        D_IN, towers(tasks), levels=levels, shared_experts=2, task_experts=1, expert_dim=D_EXP
    )


def make_ple2(tasks=TASKS3) -> PLE:
    return make_ple(tasks, levels=2)


def make_ltb(tasks=TASKS3) -> LTB:
    layers = [mlp(D_IN, [5]), mlp(5, [5]), mlp(5, [D_EXP])]
    return LTB(layers, towers(tasks), nodes=[2, 3])


MAKERS: dict[str, Callable[..., MultiTaskNetwork]] = {
    "mmoe": make_mmoe,
    "mmoe_bias": make_mmoe_bias,
    "dselect_k": make_dselect,
    "cgc": make_cgc,
    "ple3": make_ple,
    "ple2": make_ple2,
    "ltb": make_ltb,
}


def inputs(batch: int = 16) -> Tensor:
    return torch.randn(batch, D_IN, generator=torch.Generator().manual_seed(3))


def targets(batch: int = 16, tasks=TASKS3) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(4)
    return {t: torch.randn(batch, 1, generator=g) for t in tasks}


def mse_losses(model: nn.Module, x: Tensor, y: dict[str, Tensor]) -> dict[str, Tensor]:
    out = model(x)
    return {t: (out[t] - y[t]).pow(2).mean() for t in y}


# ------------------------------------------------------------------------ shapes and the split
@pytest.mark.parametrize("name", MAKERS)
def test_shapes_features_and_single_task_copies(name: str) -> None:
    model = MAKERS[name]()
    x = inputs()
    out = model(x)
    assert list(out) == list(TASKS3)
    assert all(tuple(v.shape) == (16, 1) for v in out.values())
    feats = model.features
    assert isinstance(feats, Tensor) and feats.shape[0] == 16 and feats.requires_grad
    assert model.supports_rep_mode
    copies = model.single_task_copies()
    for t in TASKS3:
        assert tuple(copies[t](x)[t].shape) == (16, 1)
    copy.deepcopy(model)  # the last forward's tensors are not copied


@pytest.mark.parametrize("name", MAKERS)
def test_shared_parameters_are_exactly_those_several_tasks_reach(name, partition_check) -> None:
    """The split is a partition, every task parameter of t is reached by t's loss only, and every
    shared parameter by every task's loss (three tasks, soft gates and soft branching)."""
    model = MAKERS[name]()
    partition_check(model)
    x = inputs()
    reached: dict[int, set[str]] = {id(p): set() for p in model.parameters()}
    for t in TASKS3:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same Gumbel sample for every task (LTB)
        model(x)[t].pow(2).mean().backward()
        for p in model.parameters():
            if p.grad is not None and p.grad.abs().sum() > 0:
                reached[id(p)].add(t)
    for p in model.shared_parameters():
        assert reached[id(p)] == set(TASKS3), tuple(p.shape)
    for t in TASKS3:
        for p in model.task_parameters(t):
            assert reached[id(p)] == {t}, (t, tuple(p.shape))


def test_ple_split_by_level() -> None:
    """PLE, 3 levels: level 3's task experts and gates, level 2's task gates and the towers are
    task parameters; all of level 1 and level 2's task experts are shared."""
    model = make_ple()
    shared = {id(p) for p in model.shared_parameters()}
    lv = model.levels
    for t in TASKS3:
        own = {id(p) for p in model.task_parameters(t)}
        for path in ("2.task_experts", "2.task_gates", "1.task_gates"):
            module = lv.get_submodule(f"{path}.{t}")
            assert {id(p) for p in module.parameters()} <= own
        for path in ("0.task_experts", "0.task_gates", "1.task_experts"):
            module = lv.get_submodule(f"{path}.{t}")
            assert {id(p) for p in module.parameters()} <= shared


# ------------------------------------------------------------------------------------- gates
@pytest.mark.parametrize("name", ["mmoe", "mmoe_bias", "cgc"])
def test_softmax_gates_sum_to_one(name: str) -> None:
    model = MAKERS[name]()
    assert isinstance(model, (MMoE, CGC))
    with torch.no_grad():  # biases away from zero
        for gate in model.gates.values():
            linear = gate.get_submodule("linear")
            assert isinstance(linear, nn.Linear)
            if linear.bias is not None:
                linear.bias.uniform_(-2.0, 2.0)
    for w in model.gate_weights(inputs()).values():
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(16))


def test_smooth_step_values_and_flat_ends() -> None:
    gamma = 2.0
    t = torch.tensor([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 5.0], dtype=torch.float64)
    expected = [0.0, 0.0, 0.5 - 0.75 * 0.5 + 0.25 * 0.125 * 2 / 2, 0.5, 0.0, 1.0, 1.0]
    # by hand: S(t) = -2/γ³ t³ + 3/(2γ) t + 1/2 = -t³/4 + 3t/4 + 1/2 for γ = 2
    expected[2] = -((-0.5) ** 3) / 4 + 3 * (-0.5) / 4 + 0.5
    expected[4] = -(0.5**3) / 4 + 3 * 0.5 / 4 + 0.5
    torch.testing.assert_close(smooth_step(t, gamma), torch.tensor(expected, dtype=torch.float64))
    ends = torch.tensor([-1.0, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(smooth_step(ends, gamma).sum(), ends)
    torch.testing.assert_close(grad, torch.zeros(2, dtype=torch.float64))  # C¹ at ±γ/2


def test_dselect_selector_matches_binary_encoding_by_hand() -> None:
    gate = DSelectKGate(D_IN, 4, 1, gamma=1.0, per_example=False)
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor([[0.1, -0.2]]))
    weights = gate(inputs(2))
    s = [float(smooth_step(torch.tensor(v), 1.0)) for v in (0.1, -0.2)]
    # expert l has bits (l & 1, l >> 1): weight Π_b (S_b if bit set else 1 - S_b)
    by_hand = [
        (s[0] if code & 1 else 1 - s[0]) * (s[1] if code >> 1 & 1 else 1 - s[1])
        for code in range(4)
    ]
    np.testing.assert_allclose(weights[0].detach().numpy(), by_hand, rtol=1e-6)


@pytest.mark.parametrize(("n", "k"), [(8, 2), (5, 2), (4, 4), (3, 1)])
@pytest.mark.parametrize("per_example", [True, False])
def test_dselect_gate_sums_to_one_and_selects_at_most_k(n: int, k: int, per_example: bool) -> None:
    gate = DSelectKGate(D_IN, n, k, gamma=1.0, per_example=per_example)
    x = inputs(32)
    with torch.no_grad():  # a generic (non-binary) state
        for p in gate.parameters():
            p.uniform_(-0.3, 0.3)
    w = gate(x)
    assert w.shape == (32, n) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(32))
    assert (w > 0).sum(-1).max() > k or n == 1 or k == n  # soft: more than k experts in use
    with torch.no_grad():  # binary selectors: every |z| beyond γ/2
        signs = torch.randint(
            0, 2, (k * gate.num_bits,), generator=torch.Generator().manual_seed(0)
        )
        z = (2.0 * signs - 1.0).double() * 3.0
        if per_example:
            gate.z.weight.zero_()
            gate.z.bias.copy_(z)
        else:
            gate.z_logits.copy_(z.view(k, gate.num_bits))
    w = gate(x)
    torch.testing.assert_close(w.sum(-1), torch.ones(32))
    assert int((w > 0).sum(-1).max()) <= k
    assert float(gate.entropy().detach()) == pytest.approx(0.0, abs=1e-9)


def test_dselect_model_entropy_and_bad_arguments() -> None:
    model = make_dselect()
    model(inputs())
    assert float(model.entropy().detach()) > 0
    with pytest.raises(ValueError, match="k must be"):
        DSelectK(D_IN, towers(), num_experts=4, k=5)
    with pytest.raises(ValueError, match="num_experts >= 2"):
        DSelectK(D_IN, towers(), num_experts=1, k=1)
    with pytest.raises(ValueError, match="gamma"):
        DSelectKGate(D_IN, 4, 2, gamma=0.0)


# ----------------------------------------------------------------------------------------- LTB
def test_ltb_eval_uses_the_argmax_tree_and_train_samples() -> None:
    model = make_ltb()
    with torch.no_grad():
        first = tensor_attr(model.shared_branches[0], "logits")
        first.copy_(torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.0, 1.0]]))
        for k, t in enumerate(TASKS3):
            one_hot = torch.eye(3)[[2, 0, 1][k]].unsqueeze(0)
            tensor_attr(model.task_branches[t], "logits").copy_(one_hot)
    assert model.tree() == [[1, 0, 1], [2, 0, 1]]
    x = inputs()
    model.eval()
    first = model(x)
    assert all(torch.equal(first[t], v) for t, v in model(x).items())
    # task "a" follows node 2 of layer 1, whose parent is node 1 of layer 0
    chain = model.single_task_copies()["a"]
    torch.testing.assert_close(chain(x)["a"], first["a"])
    model.train()
    torch.manual_seed(1)
    sampled = model(x)
    assert not torch.allclose(sampled["a"], first["a"])  # soft Gumbel sample: other paths mix in
    for p in model.branching_probabilities():
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0]))
    assert len(model.branching_parameters()) == 1 + len(TASKS3)


def test_ltb_arguments() -> None:
    with pytest.raises(ValueError, match="at least 2 layers"):
        LTB([mlp(D_IN, [4])], towers())
    with pytest.raises(ValueError, match="one per layer below the last"):
        LTB([mlp(D_IN, [4]), mlp(4, [4])], towers(), nodes=[2, 2])
    model = make_ltb()
    with pytest.raises(ValueError, match="temperature"):
        model.temperature = 0.0
    hard = LTB([mlp(D_IN, [4]), mlp(4, [D_EXP])], towers(), hard=True)
    branch = hard.task_branches["a"]
    assert isinstance(branch, BranchLogits)
    w = branch.sample(1.0, hard=True, training=True)
    assert sorted(w.flatten().tolist()) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MMoE(D_IN, towers(), num_experts=0), "num_experts"),
        (lambda: CGC(D_IN, towers(), task_experts=0), "task_experts"),
        (lambda: PLE(D_IN, towers(), levels=0), "levels"),
        (lambda: MMoE(D_IN, {"backbone": nn.Linear(D_EXP, 1)}), "reserved"),
    ],
)
def test_bad_arguments_name_the_problem(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------------------- Balancer steps
class FixedWeights(GradientMethod):
    """d = Σ w_t g_t with fixed, unequal weights (so a wrong cut or split shows)."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__(len(weights))
        self.fixed = torch.tensor(weights)

    def _aggregate(self, J: Tensor, losses: Tensor | None, present: Tensor | None) -> Tensor:
        w = self.fixed.to(J)
        self.last_weights = w
        return w @ J


def expected_grads(model, x, y, weights, mode: str) -> dict[int, Tensor]:
    """Shared parameters: ∇ Σ w_t L_t. Task t's parameters: ∇ L_t, except, in rep mode, those
    lying above the features (PLE's level L-1 task gates), which get w_t ∇ L_t."""
    torch.manual_seed(0)
    losses = mse_losses(model, x, y)
    shared = model.shared_parameters()
    total = sum(w * losses[t] for w, t in zip(weights, TASKS3, strict=True))
    out = dict(zip(map(id, shared), torch.autograd.grad(total, shared, retain_graph=True)))
    feats = model.features
    for w, t in zip(weights, TASKS3, strict=True):
        params = model.task_parameters(t)
        grads = torch.autograd.grad(losses[t], params, retain_graph=True)
        for p, g in zip(params, grads, strict=True):
            above = torch.autograd.grad(feats.sum(), p, retain_graph=True, allow_unused=True)[0]
            out[id(p)] = w * g if mode == "rep" and above is not None else g
    return out


@pytest.mark.parametrize("mode", ["param", "rep"])
@pytest.mark.parametrize("name", MAKERS)
def test_balancer_step_writes_the_weighted_gradients(name: str, mode: str) -> None:
    model = MAKERS[name]().double()
    x, y = inputs().double(), {t: v.double() for t, v in targets().items()}
    weights = [2.0, 0.5, 1.5]
    expected = expected_grads(model, x, y, weights, mode)
    balancer = taskbalance.Balancer(FixedWeights(weights), model.shared_parameters(), mode=mode)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    losses = mse_losses(model, x, y)
    assert model.features is not None
    balancer.backward(losses, features=model.features if mode == "rep" else None)
    for p in model.parameters():
        torch.testing.assert_close(p.grad, expected[id(p)].to(p.grad))


@pytest.mark.parametrize("mode", ["param", "rep"])
@pytest.mark.parametrize("name", MAKERS)
def test_mgda_step_decreases_the_loss(name: str, mode: str) -> None:
    model = MAKERS[name]()
    x, y = inputs(), targets()
    method = taskbalance.create("mgda", num_tasks=3)
    balancer = taskbalance.Balancer(method, model.shared_parameters(), mode=mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.eval()  # LTB: the argmax tree, so before/after compare one network
    with torch.no_grad():
        before = float(sum(mse_losses(model, x, y).values()))
    model.train()
    opt.zero_grad()
    losses = mse_losses(model, x, y)
    assert model.features is not None
    info = balancer.backward(losses, features=model.features if mode == "rep" else None)
    assert info.weights is not None and torch.isfinite(info.weights).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    model.eval()
    with torch.no_grad():
        after = float(sum(mse_losses(model, x, y).values()))
    assert after < before


def test_every_architecture_trains_through_the_trainer(tmp_path) -> None:
    from taskbalance.training import train

    for arch, mode in (("ple", "rep"), ("ltb", "param")):
        result = train(
            {
                "benchmark": "synthetic-mtl",
                "size": "tiny",
                "model_options": {"arch": arch},
                "method": "pcgrad",
                "mode": mode,
                "epochs": 1,
                "steps": 2,
                "cache_dir": str(tmp_path / "cache"),
                "out_dir": str(tmp_path / arch),
                "progress": False,
                "tensorboard": False,
            }
        )
        assert result.mode == mode
        assert result.test is not None
        assert all(math.isfinite(m["rmse"]) for m in result.test.values())


#: options for methods that cannot be created without them
REQUIRED_OPTIONS = {"static": {"weights": [1.0, 0.5, 2.0]}}


@pytest.mark.parametrize("name", ["ple2"])
def test_every_registered_method_steps_in_both_modes(name: str) -> None:
    """One Balancer step of every method (gradient methods in param and rep mode) writes finite
    gradients to every parameter of PLE, the architecture with the most intricate split."""
    from taskbalance.experiments.compare import resolve_methods

    x, y = inputs(), targets()
    # every method creatable without options (as `compare --methods all`), plus static
    names = sorted({*resolve_methods("all", 3, log=lambda _: None), *REQUIRED_OPTIONS})
    for method_name in names:
        options = REQUIRED_OPTIONS.get(method_name, {})
        probe = taskbalance.create(method_name, num_tasks=3, **options)
        # loss methods ignore the mode; methods keeping per-parameter state refuse rep mode
        rep = probe.kind == "gradient" and getattr(probe, "supports_rep_mode", True)
        for mode in ("param", "rep") if rep else ("param",):
            model = MAKERS[name]()
            method = taskbalance.create(
                method_name, num_tasks=3, **options, **one_batch(method_name)
            )
            balancer = taskbalance.Balancer(method, model.shared_parameters(), mode=mode)
            losses = mse_losses(model, x, y)
            assert model.features is not None
            balancer.backward(losses, features=model.features)
            for p in model.parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), (method_name, mode)
