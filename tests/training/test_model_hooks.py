"""The model hooks the Trainer honours (taskbalance.training.model_hooks): a regulariser whose
gradient is added unweighted to the balanced update (not balanced as a task), and a per-epoch
schedule (LTB's temperature annealing), checked against closed forms."""

from __future__ import annotations

import copy
from typing import cast

import pytest
import torch
from _typed import tensor_attr
from torch import Tensor, nn
from torch.utils.data import DataLoader

from taskbalance.models import LTB, DSelectK, MultiTaskModel
from taskbalance.models.experts import mlp
from taskbalance.tasks import regression_task
from taskbalance.training import Trainer
from taskbalance.training.model_hooks import model_regularization

TASKS = ("a", "b")
LAM, MU = 0.3, 0.7


def data(n: int = 16, d: int = 6, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, 2, 1, generator=g)
    every = {t: torch.tensor(True) for t in TASKS}
    return [(x[i], {"a": y[i, 0], "b": y[i, 1]}, every) for i in range(n)]


def one_batch(n: int = 16) -> DataLoader:
    # a list is a map-style dataset at runtime; torch's stubs ask for a Dataset
    return DataLoader(data(n), batch_size=n)  # type: ignore[arg-type]


class Penalised(MultiTaskModel):
    """Hard sharing with ``R = λ‖W_shared‖² + μ‖W_head_a‖²`` (gradients 2λW and 2μW_a)."""

    penalty = True

    def regularization(self) -> Tensor | None:
        if not self.penalty:
            return None
        shared = self.backbone[0].weight  # type: ignore[index]
        head = self.heads["a"][0].weight  # type: ignore[index]
        return LAM * shared.pow(2).sum() + MU * head.pow(2).sum()


def penalised(penalty: bool) -> Penalised:
    torch.manual_seed(0)
    heads = {t: nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)) for t in TASKS}
    model = Penalised(nn.Sequential(nn.Linear(6, 5), nn.Tanh()), heads)
    model.penalty = penalty
    return model


def step(model: nn.Module, method: str, mode: str | None = None):
    """One training step with lr 0 (the parameters stay, the gradients stay in .grad)."""
    trainer = Trainer(
        model,
        [regression_task(t) for t in TASKS],
        method,
        one_batch(),
        None,
        mode=mode,
        optimizer="sgd",
        lr=0.0,
        progress=False,
    )
    info = trainer.train_step(next(iter(one_batch())))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return info, grads


@pytest.mark.parametrize(
    ("method", "mode"), [("mgda", "rep"), ("mgda", "param"), ("ew", None), ("modo", "param")]
)
def test_regularizer_gradient_is_added_unweighted_in_both_modes(method: str, mode: str) -> None:
    on, off = penalised(True), penalised(False)
    info_on, with_r = step(on, method, mode)
    info_off, without = step(off, method, mode)
    # the method saw the same task gradients: same weights with and without the penalty
    assert info_on.weights is not None
    torch.testing.assert_close(info_on.weights, info_off.weights)
    expected = {n: torch.zeros_like(g) for n, g in without.items()}
    shared_w = tensor_attr(off.get_submodule("backbone.0"), "weight")
    head_w = tensor_attr(off.get_submodule("heads.a.0"), "weight")
    expected["backbone.0.weight"] = 2 * LAM * shared_w.detach()
    expected["heads.a.0.weight"] = 2 * MU * head_w.detach()
    assert set(with_r) == set(without)
    for name, g in with_r.items():
        torch.testing.assert_close(g - without[name], expected[name], msg=name)


def test_dselect_entropy_gradient_reaches_the_selectors_and_only_them() -> None:
    lam = 0.05

    def make(weight: float) -> DSelectK:
        torch.manual_seed(1)
        towers = {t: nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)) for t in TASKS}
        return DSelectK(6, towers, num_experts=4, k=2, expert_dim=4, entropy_weight=weight)

    # a gate started far from its uniform initialisation, so the selectors are in the cubic
    # region with a gradient that differs per parameter
    on, off = make(lam), make(0.0)
    for model in (on, off):
        torch.manual_seed(2)
        for gate in model.gates.values():
            for p in gate.parameters():
                p.data.uniform_(-0.3, 0.3)
    reference = copy.deepcopy(off)
    _, with_r = step(on, "mgda", "rep")
    _, without = step(off, "mgda", "rep")
    # independently: the entropy of the same batch through a copy, differentiated alone
    x = torch.stack([b[0] for b in data()])
    reference(x)
    params = dict(reference.named_parameters())
    entropy = reference.entropy()
    grads = torch.autograd.grad(lam * entropy, list(params.values()), allow_unused=True)
    selectors = 0
    for name, g in zip(params, grads, strict=True):
        diff = with_r[name] - without[name]
        if g is None:  # experts, towers, the selectors' mixing weights α: not reached
            torch.testing.assert_close(diff, torch.zeros_like(diff), msg=name)
        else:  # the selectors' z = linear(x)
            assert name.split(".")[::2] == ["gates", "z"], name
            torch.testing.assert_close(diff, g, msg=name)
            selectors += int(bool(g.abs().sum() > 0))
    assert selectors == 2 * 2  # weight and bias of z, in both tasks' gates
    regularization = on.regularization()
    assert regularization is not None and off.regularization() is None
    assert float(regularization.detach()) == pytest.approx(lam * float(entropy.detach()))


def make_ltb(**schedule) -> LTB:
    torch.manual_seed(0)
    heads = {t: nn.Linear(4, 1) for t in TASKS}
    return LTB([mlp(6, [5]), mlp(5, [4])], heads, **schedule)


def fit_ltb(model: LTB, epochs: int, out_dir=None, resume: bool = False) -> list[float]:
    seen: list[float] = []
    trainer = Trainer(
        model,
        [regression_task(t) for t in TASKS],
        "ew",
        DataLoader(data(), batch_size=8),  # type: ignore[arg-type]
        one_batch(),
        epochs=epochs,
        out_dir=out_dir,
        progress=False,
        save_best=False,
        callbacks=[lambda tr, rec: seen.append(cast(LTB, tr.model).temperature)],
    )
    trainer.fit(resume=resume)
    return seen


def test_ltb_temperature_follows_the_closed_form_and_resumes(tmp_path) -> None:
    # τ_e = max(0.3, 4 · 0.5^e): 4, 2, 1, 0.5, 0.3 (floor; 0.25 below it)
    schedule = {"temperature": 4.0, "anneal": 0.5, "min_temperature": 0.3}
    assert fit_ltb(make_ltb(**schedule), 5) == [4.0, 2.0, 1.0, 0.5, 0.3]
    assert [make_ltb(**schedule).temperature_at(e) for e in (0, 3, 10)] == [4.0, 0.5, 0.3]
    # a resumed run continues the schedule (a fresh model starts at 4 again)
    assert fit_ltb(make_ltb(**schedule), 2, tmp_path) == [4.0, 2.0]
    assert fit_ltb(make_ltb(**schedule), 4, tmp_path, resume=True) == [1.0, 0.5]
    # without a schedule the temperature is left as set by hand
    constant = make_ltb(temperature=2.0)
    constant.temperature = 0.7
    assert fit_ltb(constant, 2) == [0.7, 0.7]


def test_bad_hooks_and_schedules_name_the_problem() -> None:
    class Bad(nn.Module):
        def regularization(self):
            return torch.ones(2, requires_grad=True)

    with pytest.raises(ValueError, match="floating-point scalar"):
        model_regularization(Bad())
    with pytest.raises(ValueError, match="anneal"):
        make_ltb(anneal=1.5)
    with pytest.raises(ValueError, match="min_temperature"):
        make_ltb(anneal=0.5, min_temperature=0.0)
    with pytest.raises(ValueError, match="entropy_weight"):
        DSelectK(
            6, {t: nn.Linear(4, 1) for t in TASKS}, num_experts=4, expert_dim=4, entropy_weight=-1.0
        )


def test_benchmark_model_options_reach_the_models(tmp_path) -> None:
    from taskbalance.training import train

    seen: list[float] = []
    common = {"benchmark": "synthetic-mtl", "size": "tiny", "steps": 2, "progress": False,
              "tensorboard": False, "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    ltb = {"arch": "ltb", "temperature": 2.0, "anneal": 0.5, "min_temperature": 0.4}
    train(
        {**common, "model_options": ltb, "epochs": 3, "out_dir": str(tmp_path / "ltb")},
        callbacks=[lambda tr, rec: seen.append(cast(LTB, tr.model).temperature)],
    )
    assert seen == [2.0, 1.0, 0.5]
    models: list[nn.Module] = []
    dselect = {"arch": "dselect_k", "entropy_weight": 0.25}
    train(
        {**common, "model_options": dselect, "epochs": 1, "out_dir": str(tmp_path / "ds")},
        callbacks=[lambda tr, rec: models.append(tr.model)],
    )
    assert isinstance(models[0], DSelectK)
    assert models[0].entropy_weight == 0.25
    assert models[0].regularization() is not None
