"""One training step of each architecture with taskbalance.Balancer (param and rep mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import taskbalance
from taskbalance.models import (
    MTAN,
    ClassificationHead,
    CrossStitchNetwork,
    DenseHead,
    MultiTaskModel,
    SegNetBackbone,
    SmallCNN,
)


def needs(method: str) -> None:
    if method not in taskbalance.available_methods():
        pytest.skip(f"method {method!r} is not registered yet")


def make_method(name: str, num_tasks: int):
    needs(name)
    options = {"seed": 0} if name == "pcgrad" else {}
    return taskbalance.create(name, num_tasks=num_tasks, **options)


def batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 8, 8, generator=g)
    targets = {
        "a": torch.randint(0, 3, (8,), generator=g),
        "b": torch.randint(0, 2, (8,), generator=g),
    }
    return x, targets


def cls_losses(model: nn.Module, x: torch.Tensor, y: dict[str, torch.Tensor]):
    out = model(x)
    return {t: F.cross_entropy(out[t], y[t]) for t in y}


def hard_model(branch_point: int = 3) -> MultiTaskModel:
    heads = {"a": ClassificationHead(4, 3), "b": ClassificationHead(4, 2)}
    return MultiTaskModel.from_layers(SmallCNN(1, width=2, out_dim=4), heads, branch_point)


def cross_stitch_model() -> CrossStitchNetwork:
    heads = {"a": ClassificationHead(4, 3), "b": ClassificationHead(4, 2)}
    return CrossStitchNetwork(SmallCNN(1, width=2, out_dim=4), heads, stitch_after=[0, 1, 3])


def mtan_model() -> MTAN:
    heads = {"a": ClassificationHead(2, 3), "b": ClassificationHead(2, 2)}
    return MTAN(SegNetBackbone(1, width=2, depth=2), heads)


def one_step(model, method_name: str, mode: str) -> tuple[float, float, object]:
    """Total loss before and after one small SGD step, and the StepInfo."""
    x, y = batch()
    method = make_method(method_name, 2)
    balancer = taskbalance.Balancer(method, model.shared_parameters(), mode=mode)
    opt = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=1e-2)
    model.train()
    with torch.no_grad():
        before = sum(cls_losses(model, x, y).values()).item()
    opt.zero_grad()
    losses = cls_losses(model, x, y)
    features = model.features if mode == "rep" else None
    info = balancer.backward(losses, features=features)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in model.shared_parameters())
    for t in model.task_names:
        assert any(p.grad.abs().sum() > 0 for p in model.task_parameters(t))
    opt.step()
    with torch.no_grad():
        after = sum(cls_losses(model, x, y).values()).item()
    return before, after, info


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
@pytest.mark.parametrize("mode", ["param", "rep"])
def test_hard_sharing_step_decreases_loss(method: str, mode: str) -> None:
    before, after, _ = one_step(hard_model(), method, mode)
    assert after < before


@pytest.mark.parametrize("make", [cross_stitch_model, mtan_model], ids=["cross_stitch", "mtan"])
@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_other_architectures_param_mode(make, method: str) -> None:
    before, after, _ = one_step(make(), method, "param")
    assert after < before


def test_task_parameters_get_their_own_gradient_with_pcgrad() -> None:
    model = hard_model(branch_point=2)
    x, y = batch()
    losses = cls_losses(model, x, y)
    expected = torch.autograd.grad(losses["a"], model.task_parameters("a"), retain_graph=True)
    balancer = taskbalance.Balancer(make_method("pcgrad", 2), model.shared_parameters())
    balancer.backward(losses)
    for p, g in zip(model.task_parameters("a"), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_rep_mode_ew_matches_param_mode() -> None:
    """EW direction is the same in both modes: the shared gradients must agree."""
    needs("ew")
    grads = {}
    for mode in ("param", "rep"):
        torch.manual_seed(0)
        model = hard_model()
        x, y = batch()
        losses = cls_losses(model, x, y)
        balancer = taskbalance.Balancer(
            taskbalance.create("ew", num_tasks=2), model.shared_parameters(), mode=mode
        )
        balancer.backward(losses, features=model.features)
        assert all(p.grad is not None for p in model.shared_parameters())
        grads[mode] = [p.grad.clone() for p in model.shared_parameters() if p.grad is not None]
    for gp, gr in zip(grads["param"], grads["rep"], strict=True):
        torch.testing.assert_close(gp, gr)


@pytest.mark.parametrize("make", [cross_stitch_model, mtan_model], ids=["cross_stitch", "mtan"])
def test_rep_mode_unsupported_architectures_fail_clearly(make) -> None:
    model = make()
    assert not model.supports_rep_mode and model.features is None
    x, y = batch()
    balancer = taskbalance.Balancer(make_method("pcgrad", 2), model.shared_parameters(), "rep")
    with pytest.raises(ValueError, match="features"):
        balancer.backward(cls_losses(model, x, y), features=model.features)


def test_dense_mtan_step_runs() -> None:
    model = MTAN(SegNetBackbone(1, width=2, depth=1), {"d": DenseHead(2, 1), "e": DenseHead(2, 1)})
    x = torch.randn(2, 1, 4, 4)
    out = model(x)
    losses = {t: out[t].pow(2).mean() for t in out}
    balancer = taskbalance.Balancer(make_method("ew", 2), model.shared_parameters())
    balancer.backward(losses)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
