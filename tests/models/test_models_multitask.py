"""MultiTaskModel: forward, parameter split, branch point, gradients, freezing, errors."""

from __future__ import annotations

import pytest
import torch
from _typed import tensor_attr
from torch import nn

from taskbalance.models import ClassificationHead, MultiTaskModel, SmallCNN


def _branch_weight(model: nn.Module, task: str, index: int) -> torch.Tensor:
    """The weight of layer ``index`` (by position) of a task's branch."""
    branch = model.get_submodule(f"heads.{task}.branch")
    assert isinstance(branch, nn.Sequential)
    return tensor_attr(branch[index], "weight")


def tiny_layers() -> list[nn.Module]:
    return [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()]


def tiny_heads() -> dict[str, nn.Module]:
    return {"a": nn.Linear(4, 2), "b": nn.Linear(4, 1)}


def numel(params) -> int:
    return sum(p.numel() for p in params)


def test_forward_shapes_and_features() -> None:
    model = MultiTaskModel(nn.Linear(3, 4), tiny_heads())
    x = torch.randn(5, 3)
    out = model(x)
    assert list(out) == ["a", "b"]
    assert out["a"].shape == (5, 2) and out["b"].shape == (5, 1)
    assert model.task_names == ("a", "b")
    assert model.features is not None and model.features.shape == (5, 4)
    assert model.features.requires_grad


def test_features_is_what_heads_consume() -> None:
    model = MultiTaskModel(nn.Linear(3, 4), tiny_heads())
    out = model(torch.randn(5, 3))
    assert model.features is not None
    (grad,) = torch.autograd.grad(out["a"].sum(), model.features)
    expected = tensor_attr(model.heads["a"], "weight").sum(0).expand(5, 4)
    torch.testing.assert_close(grad, expected)


def test_small_cnn_model_shapes(partition_check) -> None:
    heads = {"left": ClassificationHead(8, 10), "right": ClassificationHead(8, 10, hidden=6)}
    model = MultiTaskModel(SmallCNN(1, width=4, out_dim=8), heads)
    out = model(torch.randn(2, 1, 16, 16))
    assert out["left"].shape == (2, 10) and out["right"].shape == (2, 10)
    partition_check(model)


def test_partition_and_counts(partition_check) -> None:
    model = MultiTaskModel(nn.Linear(3, 4), tiny_heads())
    partition_check(model)
    assert numel(model.shared_parameters()) == 16
    assert numel(model.task_parameters("a")) == 10
    assert numel(model.task_parameters("b")) == 5


@pytest.mark.parametrize("branch_point, shared", [(0, 0), (1, 16), (2, 16), (3, 36), (4, 36)])
def test_branch_point_changes_split(branch_point: int, shared: int, partition_check) -> None:
    model = MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=branch_point)
    assert model.branch_point == branch_point
    partition_check(model)
    assert numel(model.shared_parameters()) == shared
    # every layer after the branch point is copied once per task
    assert numel(model.task_parameters("a")) == 36 - shared + 10
    assert numel(model.task_parameters("b")) == 36 - shared + 5
    out = model(torch.randn(2, 3))
    assert out["a"].shape == (2, 2) and out["b"].shape == (2, 1)


def test_branch_copies_are_independent_and_start_equal() -> None:
    model = MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=1)
    wa = _branch_weight(model, "a", 1)
    wb = _branch_weight(model, "b", 1)
    assert wa is not wb
    torch.testing.assert_close(wa, wb)
    re = MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=1, reinitialize=True)
    assert not torch.equal(_branch_weight(re, "a", 1), _branch_weight(re, "b", 1))


def test_from_layers_sequential_keeps_names_and_factory_heads() -> None:
    cnn = SmallCNN(1, width=2, out_dim=4)
    model = MultiTaskModel.from_layers(
        cnn, lambda t: ClassificationHead(4, 3), branch_point=2, task_names=["x", "y"]
    )
    assert [n for n, _ in model.backbone.named_children()] == ["block1", "block2"]
    branch = model.get_submodule("heads.x.branch")
    assert [n for n, _ in branch.named_children()] == ["pool", "fc"]
    assert model(torch.randn(2, 1, 8, 8))["y"].shape == (2, 3)


@pytest.mark.parametrize("branch_point", [0, 2, 4])
def test_task_gradient_reaches_only_shared_and_own_params(branch_point: int, task_grads) -> None:
    model = MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=branch_point)
    x = torch.randn(8, 3)
    g = task_grads(model, x, "a")
    assert g["touched"] <= g["shared"] | g["a"]
    assert not g["touched"] & g["b"]
    assert g["a"] <= g["touched"]  # every parameter of task a gets a non-zero gradient
    assert g["shared"] <= g["touched"]


def test_freeze_backbone_stops_updates_and_bn_stats() -> None:
    model = MultiTaskModel(SmallCNN(1, width=2, out_dim=4), {"a": ClassificationHead(4, 2)})
    model.freeze("backbone")
    assert model.shared_parameters() == []
    assert model.frozen_parts == {"backbone"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    model.train()
    bn = model.get_submodule("backbone.block1.conv.1")
    assert not bn.training  # BatchNorm of a frozen part stays in eval mode
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 1, 8, 8))["a"].sum().backward()
        opt.step()
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith("backbone."):
            assert torch.equal(value, after[name]), name  # weights and running stats
    assert not torch.equal(before["heads.a.mlp.weight"], after["heads.a.mlp.weight"])

    model.unfreeze("backbone")
    assert bn.training
    assert all(p.requires_grad for p in model.backbone.parameters())
    model.eval()
    assert not bn.training


def test_freeze_task_and_restore_requires_grad(partition_check) -> None:
    model = MultiTaskModel(nn.Linear(3, 4), tiny_heads())
    model.heads["b"].bias.requires_grad_(False)  # set by the user, must survive unfreeze
    model.freeze("b")
    model.freeze("b")  # idempotent
    assert model.task_parameters("b") == []
    assert len(model.task_parameters("a")) == 2
    partition_check(model)
    model.unfreeze("b")
    assert model.heads["b"].weight.requires_grad
    assert not model.heads["b"].bias.requires_grad
    model.freeze("shared")  # alias of "backbone"
    assert model.frozen_parts == {"backbone"}


def test_heads_must_match_tasks() -> None:
    with pytest.raises(ValueError, match="'c'"):
        MultiTaskModel(nn.Linear(3, 4), tiny_heads(), task_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="'b'"):
        MultiTaskModel(nn.Linear(3, 4), tiny_heads(), task_names=["a"])
    with pytest.raises(ValueError, match="at least one task"):
        MultiTaskModel(nn.Linear(3, 4), {})
    with pytest.raises(ValueError, match="reserved"):
        MultiTaskModel(nn.Linear(3, 4), {"backbone": nn.Linear(4, 1)})
    with pytest.raises(TypeError, match="'a'"):
        MultiTaskModel(nn.Linear(3, 4), {"a": "not a module"})  # type: ignore[dict-item]


def test_bad_branch_point_and_parts() -> None:
    with pytest.raises(ValueError, match="branch_point=5"):
        MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=5)
    with pytest.raises(ValueError, match="branch_point=-1"):
        MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=-1)
    with pytest.raises(ValueError, match="task_names"):
        MultiTaskModel.from_layers(tiny_layers(), lambda t: nn.Linear(4, 1), branch_point=1)
    model = MultiTaskModel(nn.Linear(3, 4), tiny_heads())
    with pytest.raises(ValueError, match="'z'"):
        model.freeze("z")
    with pytest.raises(ValueError, match="'z'"):
        model.task_parameters("z")


def test_module_shared_between_head_and_backbone_is_rejected() -> None:
    shared = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="shared part"):
        MultiTaskModel(nn.Sequential(nn.Linear(3, 4), shared), {"a": shared, "b": nn.Linear(4, 1)})


def test_rep_detach_and_backward_shared() -> None:
    model = MultiTaskModel(nn.Linear(3, 4), tiny_heads(), rep_detach=True)
    out = model(torch.randn(5, 3))
    (out["a"].sum() + out["b"].sum()).backward()
    assert model.backbone.weight.grad is None
    assert model.features is not None and model.features.grad is not None
    model.backward_shared()
    assert model.backbone.weight.grad is not None


def test_single_task_copies() -> None:
    model = MultiTaskModel.from_layers(tiny_layers(), tiny_heads(), branch_point=2)
    singles = model.single_task_copies()
    assert set(singles) == {"a", "b"}
    assert singles["a"].task_names == ("a",)
    copied = tensor_attr(singles["a"].get_submodule("backbone.0"), "weight")
    assert copied is not tensor_attr(model.get_submodule("backbone.0"), "weight")
    x = torch.randn(3, 3)
    torch.testing.assert_close(singles["a"](x)["a"], model(x)["a"])
