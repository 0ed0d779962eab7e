"""Task kinds: each built-in kind's shapes, preset and confidence rule (numbers worked out by
hand), and a new kind registered and used by annotate's pseudo-labelling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from taskbalance.data import MultiTaskDataset
from taskbalance.experiments.annotate import predict_pseudo_labels
from taskbalance.tasks import (
    ConfidentLabels,
    RegressionErrors,
    Task,
    TaskKind,
    get_kind,
    l1_loss,
    register_kind,
    task_kinds,
)
from taskbalance.tasks import kinds as kinds_module
from taskbalance.tasks.confidence import mirror_depth, mirror_normals
from taskbalance.tasks.kinds import same_shape

BUILT_IN = [
    "custom",
    "classification",
    "binary",
    "regression",
    "segmentation",
    "depth",
    "normal",
    "ball_position",
    "event",
]

# kind -> (shapes that fit, shapes that do not), each (prediction, target)
Shape = tuple[int, ...]
SHAPES: dict[str, tuple[list[tuple[Shape, Shape]], list[tuple[Shape, Shape]]]] = {
    "classification": ([((4, 3), (4,))], [((4, 3), (4, 3)), ((4, 3), (5,))]),
    "event": ([((2, 5), (2,))], [((2, 5, 1), (2,))]),
    "binary": ([((4, 2), (4, 2))], [((4, 2), (4,))]),
    "regression": ([((4, 1), (4, 1))], [((4, 1), (4,))]),
    "segmentation": ([((2, 3, 8, 8), (2, 8, 8))], [((2, 3, 8, 8), (2, 8, 7)), ((2, 3), (2,))]),
    "depth": ([((2, 1, 4, 4), (2, 1, 4, 4))], [((2, 1, 4, 4), (2, 4, 4))]),
    "normal": ([((2, 3, 4, 4), (2, 3, 4, 4))], [((2, 1, 4, 4), (2, 1, 4, 4))]),
    "ball_position": ([((3, 12), (3, 2))], [((3, 12), (3,)), ((3, 12), (3, 3))]),
    "custom": ([((4, 7), (4, 2, 2))], [((4, 7), (3, 7))]),
}


def test_every_built_in_kind_is_registered_with_its_preset() -> None:
    assert sorted(task_kinds()) >= sorted(BUILT_IN)
    assert sorted(task_kinds(with_confidence=True)) == sorted(
        ["classification", "binary", "segmentation", "depth", "normal", "ball_position", "event"]
    )
    for name in BUILT_IN:
        kind = get_kind(name)
        assert kind.name == name
        if kind.preset is not None:
            assert kind.preset.__name__ == f"{name}_task"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_prediction_shapes_of_each_kind(name: str) -> None:
    kind = get_kind(name)
    good, bad = SHAPES[name]
    for p, t in good:
        assert kind.fits(p, t)
        kind.check_shapes("x", torch.zeros(p), torch.zeros(t))
    for p, t in bad:
        assert not kind.fits(p, t)
        with pytest.raises(ValueError, match=rf"task 'x' \({name}\).*expected {kind.shapes[:10]}"):
            kind.check_shapes("x", torch.zeros(p), torch.zeros(t))


def _rule(
    name: str, pred: torch.Tensor, mirrored=None, threshold=0.5, task=None
) -> ConfidentLabels:
    kind = get_kind(name)
    assert kind.confidence is not None
    return kind.confidence(task, pred, mirrored, threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["classification", "event"])
def test_max_softmax_rule(name: str) -> None:
    # softmax(ln 3, 0) = (0.75, 0.25); softmax(0, ln 9) = (0.1, 0.9)
    pred = torch.tensor([[math.log(3), 0.0], [0.0, math.log(9)]])
    out = _rule(name, pred, threshold=0.8)
    assert out.values.tolist() == [0, 1]
    assert torch.allclose(out.confidence, torch.tensor([0.75, 0.9]))
    assert out.coverage.tolist() == [1.0, 1.0]
    assert out.kept.tolist() == [False, True]


def test_binary_rule_is_the_least_confident_element() -> None:
    # sigmoid(ln 4) = 0.8 -> 0.8; sigmoid(-ln 9) = 0.1 -> 0.9; the sample's confidence is 0.8
    out = _rule("binary", torch.tensor([[math.log(4), -math.log(9)]]), threshold=0.85)
    assert out.values.tolist() == [[1.0, 0.0]]
    assert out.confidence.tolist() == pytest.approx([0.8])
    assert out.kept.tolist() == [False]


def test_ball_position_rule_is_the_smaller_axis_mass_near_the_peak() -> None:
    from taskbalance.tasks import ball_position_task

    task = ball_position_task("ball", 8, 4)
    x = torch.zeros(8)
    x[4] = math.log(5)  # softmax: 5/12 at bin 4, 1/12 elsewhere; bins 2..6 hold 9/12
    y = torch.tensor([math.log(5), 0.0, 0.0, 0.0])  # 5/8 at bin 0; bins 0..2 hold 7/8
    out = _rule("ball_position", torch.cat([x, y])[None], threshold=0.7, task=task)
    assert out.values.tolist() == [[4.0, 0.0]]
    assert out.confidence.tolist() == pytest.approx([0.75])
    assert out.kept.tolist() == [True]


def test_segmentation_rule_rejects_low_pixels() -> None:
    # pixel 0: (0.75 class 0) rejected at 0.8 -> 255; pixel 1: (0.9, class 1) kept
    pred = torch.tensor([[math.log(3), 0.0], [0.0, math.log(9)]]).T.reshape(1, 2, 1, 2)
    task = Task("s", l1_loss, RegressionErrors(), kind="segmentation", ignore_value=255)
    out = _rule("segmentation", pred, threshold=0.8, task=task)
    assert out.values.tolist() == [[[255, 1]]]
    assert out.coverage.tolist() == [0.5]
    assert out.confidence.tolist() == pytest.approx([(0.75 + 0.9) / 2])
    assert out.kept.tolist() == [True]


def test_depth_rule_is_flip_agreement() -> None:
    # d1 = (2, 4), d2 = (2, 6): c = (1, 1 - 2 / 5 = 0.6); labels = means (2, 5)
    d1, d2 = torch.tensor([[[[2.0, 4.0]]]]), torch.tensor([[[[2.0, 6.0]]]])
    out = _rule("depth", d1, d2, threshold=0.7)
    assert out.values.flatten().tolist() == [2.0, 0.0]  # the rejected pixel: invalid depth 0
    assert out.confidence.tolist() == pytest.approx([0.8])
    assert out.coverage.tolist() == [0.5]
    with pytest.raises(ValueError, match="mirrored"):
        _rule("depth", d1, None)


def test_normal_rule_is_flip_agreement() -> None:
    # cos((0, 0, 1), (0.6, 0, 0.8)) = 0.8; the label is (0.6, 0, 1.8) / sqrt(3.6)
    n1 = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    n2 = torch.tensor([0.6, 0.0, 0.8]).reshape(1, 3, 1, 1)
    out = _rule("normal", n1, n2, threshold=0.5)
    expected = torch.tensor([0.6, 0.0, 1.8]) / math.sqrt(3.6)
    assert torch.allclose(out.values.flatten(), expected)
    assert out.confidence.tolist() == pytest.approx([0.8])
    strict = _rule("normal", n1, n2, threshold=0.9)
    assert strict.values.abs().sum() == 0 and strict.kept.tolist() == [False]


def test_mirror_back_flips_width_and_negates_normal_x() -> None:
    p = torch.arange(12.0).reshape(1, 3, 2, 2)
    assert torch.equal(mirror_depth(p), p.flip(-1))
    n = mirror_normals(p)
    assert torch.equal(n[:, 0], -p.flip(-1)[:, 0]) and torch.equal(n[:, 1:], p.flip(-1)[:, 1:])
    assert get_kind("depth").mirror_back is mirror_depth
    assert get_kind("normal").mirror_back is mirror_normals
    assert get_kind("segmentation").mirror_back is None


def test_unknown_and_duplicate_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"task 't': unknown kind 'nope'.*register_kind"):
        Task("t", l1_loss, RegressionErrors(), kind="nope")
    with pytest.raises(ValueError, match="registered already"):
        register_kind(TaskKind("depth", "x", same_shape))
    with pytest.raises(ValueError, match="confidence_rule"):
        TaskKind("k", "x", same_shape, confidence=lambda *a: None)  # type: ignore[arg-type,return-value]


def _nearest_count(task, pred, mirrored, threshold) -> ConfidentLabels:
    """A count is confident when the prediction is near an integer: c = 1 - 2 |p - round(p)|."""
    assert mirrored is None
    values = pred.round()
    conf = (1 - 2 * (pred - values).abs()).reshape(pred.shape[0])
    return ConfidentLabels(values, conf, torch.ones_like(conf), conf >= threshold)


class Echo(nn.Module):
    def forward(self, x):
        return {"cars": x}


def test_a_new_kind_is_one_registration_and_annotate_uses_its_rule(monkeypatch) -> None:
    monkeypatch.setattr(kinds_module, "_REGISTRY", dict(kinds_module._REGISTRY))
    count = register_kind(
        TaskKind(
            "count",
            "prediction and target [B, 1] counts",
            same_shape,
            confidence=_nearest_count,
            confidence_rule="1 - 2 |p - round(p)|",
        )
    )
    task = Task("cars", l1_loss, RegressionErrors(), kind="count")
    assert task.kind == "count" and task.task_kind is count
    with pytest.raises(ValueError, match=r"task 'cars' \(count\).*\[B, 1\] counts"):
        task.loss(torch.zeros(3, 1), torch.zeros(3))
    # predictions 2.1, 3.5, 0.95, 7.0 -> confidence 0.8, 0, 0.9, 1
    inputs = torch.tensor([[2.1], [3.5], [0.95], [7.0]])
    data = MultiTaskDataset(inputs, {"cars": torch.zeros(4, 1)})
    out = predict_pseudo_labels(Echo(), task, data, [0, 1, 2], threshold=0.75, batch_size=2)
    assert out.indices.tolist() == [0, 2]
    assert out.values.flatten().tolist() == [2.0, 1.0]
    assert out.confidences.tolist() == pytest.approx([0.8, 0.9], abs=1e-6)
    assert out.kind == "count" and out.rule == "1 - 2 |p - round(p)|"
