"""Preset factories: names, directions, primary metrics, and one loss/metric round trip each."""

from __future__ import annotations

import pytest
import torch

from taskbalance.tasks import (
    Task,
    ball_position_task,
    binary_task,
    classification_task,
    depth_task,
    event_task,
    gaussian_1d_target,
    normal_task,
    regression_task,
    segmentation_task,
)

G = torch.Generator().manual_seed(0)


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


CASES = [
    (
        classification_task("c", 4),
        lambda: (_rand(5, 4), torch.randint(0, 4, (5,), generator=G)),
        {"accuracy": True},
        "accuracy",
    ),
    (
        binary_task("b"),
        lambda: (_rand(5, 2), torch.randint(0, 2, (5, 2), generator=G).float()),
        {"accuracy": True},
        "accuracy",
    ),
    (
        regression_task("r"),
        lambda: (_rand(5, 3), _rand(5, 3)),
        {"mae": False, "rmse": False},
        "mae",
    ),
    (
        regression_task("r2", loss="mse"),
        lambda: (_rand(5), _rand(5)),
        {"mae": False, "rmse": False},
        "rmse",
    ),
    (
        segmentation_task("s", 3),
        lambda: (_rand(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4), generator=G)),
        {"miou": True, "pixel_acc": True},
        "miou",
    ),
    (
        depth_task("d"),
        lambda: (_rand(2, 1, 4, 4).abs(), _rand(2, 1, 4, 4).abs()),
        {"abs_err": False, "rel_err": False},
        "abs_err",
    ),
    (
        normal_task("n"),
        lambda: (_rand(2, 3, 4, 4), _rand(2, 3, 4, 4)),
        {
            "mean_angle": False,
            "median_angle": False,
            "within_11.25": True,
            "within_22.5": True,
            "within_30": True,
        },
        "mean_angle",
    ),
    (
        ball_position_task("ball", 16, 8),
        lambda: (_rand(3, 24), torch.tensor([[1.0, 2], [15, 7], [8, 0]])),
        {"rmse_px": False},
        "rmse_px",
    ),
    (
        event_task("e", 3),
        lambda: (_rand(6, 3), torch.randint(0, 3, (6,), generator=G)),
        {"event_acc": True},
        "event_acc",
    ),
    (
        event_task("e0", 3, background_class=0),
        lambda: (_rand(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])),
        {"event_acc": True, "frame_acc": True},
        "event_acc",
    ),
]


@pytest.mark.parametrize(
    ("task", "make", "directions", "primary"), CASES, ids=[c[0].name for c in CASES]
)
def test_preset_round_trip(task: Task, make, directions: dict, primary: str) -> None:
    assert task.higher_is_better == directions
    assert task.primary_metric == primary
    pred, target = make()
    pred.requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss is not None and loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # masking the first sample out removes its gradient
    pred.grad = None
    mask = torch.ones(pred.shape[0], dtype=torch.bool)
    mask[0] = False
    masked = task.loss(pred, target, mask)
    assert masked is not None
    masked.backward()
    assert torch.count_nonzero(pred.grad[0]) == 0
    metrics = task.new_metrics()
    metrics.update(pred, target, mask)
    values = metrics.compute()
    assert set(values) == set(directions)
    assert all(isinstance(v, float) and v == v for v in values.values())


def test_ball_position_task_perfect_prediction_has_zero_rmse() -> None:
    width, height = 20, 10
    task = ball_position_task("ball", width, height, sigma=1.5)
    xy = torch.tensor([[4.0, 3.0], [19.0, 0.0]])
    logits = torch.cat(
        [
            gaussian_1d_target(xy[:, 0], width, 1.5).log(),
            gaussian_1d_target(xy[:, 1], height, 1.5).log(),
        ],
        dim=1,
    )
    metrics = task.new_metrics()
    metrics.update(logits, xy)
    assert metrics.compute() == {"rmse_px": 0.0}
    shifted = torch.roll(logits[:, :width], 2, dims=1)  # x off by 2 px for sample 0
    metrics.reset()
    metrics.update(torch.cat([shifted, logits[:, width:]], dim=1)[:1], xy[:1])
    assert metrics.compute()["rmse_px"] == pytest.approx(2.0)


def test_segmentation_task_loss_options() -> None:
    pred = _rand(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4), generator=G)
    ce = segmentation_task("s", 3).loss(pred, target)
    dice = segmentation_task("s", 3, loss="dice").loss(pred, target)
    both = segmentation_task("s", 3, loss="ce+dice").loss(pred, target)
    assert ce is not None and dice is not None and both is not None
    assert float(both) == pytest.approx(float(ce) + float(dice), rel=1e-6)
    with pytest.raises(ValueError, match="'ce', 'dice' or 'ce\\+dice'"):
        segmentation_task("s", 3, loss="focal")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: classification_task("c", 1), "num_classes must be an int >= 2"),
        (lambda: segmentation_task("s", 0), "num_classes"),
        (lambda: ball_position_task("b", 0, 5), "width"),
        (lambda: ball_position_task("b", 5, 5, sigma=0), "sigma"),
        (lambda: regression_task("r", loss="huber"), "'l1' or 'mse'"),  # type: ignore[arg-type]
        (lambda: event_task("e", 3, background_class=3), "background_class"),
    ],
)
def test_preset_argument_errors(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()
