"""Cross-stitch networks (Misra et al., CVPR 2016)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskbalance.models import ClassificationHead, CrossStitchNetwork, CrossStitchUnit, SmallCNN


def tiny_column() -> list[nn.Module]:
    return [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh()]


def heads3() -> dict[str, nn.Module]:
    return {"a": nn.Linear(4, 2), "b": nn.Linear(4, 1), "c": nn.Linear(4, 3)}


def test_unit_init_two_tasks_is_the_papers() -> None:
    unit = CrossStitchUnit(2, num_channels=3)
    expected = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    assert unit.alpha.shape == (3, 2, 2)
    for c in range(3):
        torch.testing.assert_close(unit.alpha[c].detach(), expected)


def test_unit_init_t_tasks_rows_sum_to_one() -> None:
    unit = CrossStitchUnit(4, per_channel=False)
    alpha = unit.alpha.detach()
    assert alpha.shape == (4, 4)
    torch.testing.assert_close(alpha.diagonal(), torch.full((4,), 0.9))
    off = alpha[~torch.eye(4, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full((12,), 0.1 / 3))
    torch.testing.assert_close(alpha.sum(1), torch.ones(4))


def test_unit_mixing_matches_formula() -> None:
    unit = CrossStitchUnit(2, num_channels=3)
    with torch.no_grad():
        unit.alpha.normal_()
    xs = [torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)]
    out = unit(xs)
    a = unit.alpha.detach()
    for i in range(2):
        expected = sum(a[:, i, j].view(1, 3, 1, 1) * xs[j] for j in range(2))
        torch.testing.assert_close(out[i], expected)
    layer_unit = CrossStitchUnit(2, per_channel=False)
    out2 = layer_unit([torch.ones(2, 3), torch.zeros(2, 3)])
    torch.testing.assert_close(out2[1], torch.full((2, 3), 0.1))


def test_network_shapes_and_split(partition_check) -> None:
    net = CrossStitchNetwork(tiny_column(), heads3())
    out = net(torch.randn(5, 3))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"a": (5, 2), "b": (5, 1), "c": (5, 3)}
    assert net.stitch_after == (0, 1, 2)
    partition_check(net)
    assert net.features is None and not net.supports_rep_mode
    # default: columns count as shared, task parameters are the heads
    assert {id(p) for p in net.task_parameters("b")} == {id(p) for p in net.heads["b"].parameters()}
    paper = CrossStitchNetwork(tiny_column(), heads3(), columns_shared=False)
    partition_check(paper)
    assert {id(p) for p in paper.shared_parameters()} == {id(p) for p in paper.units.parameters()}
    n_col = sum(p.numel() for p in paper.columns["a"].parameters())
    assert sum(p.numel() for p in paper.task_parameters("a")) == n_col + 10


def test_task_gradient_reaches_only_shared_and_own_params(task_grads) -> None:
    net = CrossStitchNetwork(tiny_column(), heads3())
    g = task_grads(net, torch.randn(6, 3), "a")
    assert g["touched"] <= g["shared"] | g["a"]
    assert not g["touched"] & (g["b"] | g["c"])
    # through the units, task a's loss reaches every column: that is why they are shared
    for task in ("a", "b", "c"):
        column = net.columns[task]
        assert isinstance(column, nn.Sequential)
        assert id(column[0].weight) in g["touched"]


def test_network_with_small_cnn_measures_channels() -> None:
    x = torch.randn(2, 1, 8, 8)
    cnn = SmallCNN(1, width=2, out_dim=4, pool_size=2)
    heads = {"a": ClassificationHead(4, 3), "b": ClassificationHead(4, 2)}
    net = CrossStitchNetwork(cnn, heads, example_input=x)
    # a unit's one parameter is its alpha
    assert [p.shape[0] for p in net.units.parameters()] == [2, 4, 16]
    assert net(x)["a"].shape == (2, 3)
    with pytest.raises(ValueError, match="example_input"):
        CrossStitchNetwork(cnn, heads, stitch_after=[2])
    few = CrossStitchNetwork(cnn, heads, stitch_after=[0, 1])  # channels read from the layers
    assert [p.shape[0] for p in few.units.parameters()] == [2, 4]


def test_network_errors_and_single_task_copies() -> None:
    with pytest.raises(ValueError, match="out of range"):
        CrossStitchNetwork(tiny_column(), heads3(), stitch_after=[4])
    with pytest.raises(ValueError, match="'d'"):
        CrossStitchNetwork(tiny_column(), heads3(), task_names=["a", "b", "c", "d"])
    net = CrossStitchNetwork(tiny_column(), heads3())
    singles = net.single_task_copies()
    assert singles["c"](torch.randn(2, 3))["c"].shape == (2, 3)
    n_single = sum(p.numel() for p in singles["c"].parameters())
    assert n_single == sum(p.numel() for p in net.columns["c"].parameters()) + 15


def test_infer_out_channels_looks_back_through_activations_only() -> None:
    from taskbalance.models.cross_stitch import infer_out_channels

    layers = [nn.Conv2d(1, 5, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(20, 7)]
    assert [infer_out_channels(layers, i) for i in range(5)] == [5, 5, 5, None, 7]


def test_freeze_shared_part_of_cross_stitch() -> None:
    net = CrossStitchNetwork(tiny_column(), heads3())
    net.freeze("shared")
    assert net.shared_parameters() == []
    assert not any(p.requires_grad for p in net.units.parameters())
    assert not any(p.requires_grad for p in net.columns.parameters())
    net.unfreeze("shared")
    assert all(p.requires_grad for p in net.parameters())
