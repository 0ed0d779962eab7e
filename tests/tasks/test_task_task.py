"""The Task API: masked loss, validation errors, metric bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch

from taskbalance.tasks import (
    Accuracy,
    EmptyMetricError,
    RegressionErrors,
    Task,
    classification_task,
    depth_task,
    l1_loss,
    regression_task,
    segmentation_task,
)


def test_loss_averages_over_labelled_samples_only() -> None:
    task = regression_task("age")
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    target = torch.tensor([0.0, 0.0, 0.0, 0.0])
    loss = task.loss(pred, target, torch.tensor([True, False, True, False]))
    assert loss is not None
    assert float(loss.detach()) == pytest.approx((1 + 3) / 2)
    loss.backward()
    assert pred.grad is not None
    assert pred.grad.tolist() == [0.5, 0.0, 0.5, 0.0]


def test_loss_is_none_without_labelled_samples_or_valid_pixels() -> None:
    task = regression_task("age")
    assert task.loss(torch.ones(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool)) is None
    seg = segmentation_task("seg", 3)
    pred = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1] = 255
    # sample 0 masked out, sample 1 entirely ignored
    assert seg.loss(pred, target, torch.tensor([False, True])) is None
    depth = depth_task("depth")
    assert depth.loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)) is None


def test_nan_placeholder_at_unlabelled_sample_is_harmless() -> None:
    task = regression_task("age", loss="mse")
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    target = torch.tensor([3.0, math.nan])
    loss = task.loss(pred, target, torch.tensor([True, False]))
    assert loss is not None
    assert float(loss.detach()) == pytest.approx(4.0)
    loss.backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all() and pred.grad.tolist() == [-4.0, 0.0]


def test_nan_at_labelled_position_raises_with_fix() -> None:
    task = regression_task("age")
    with pytest.raises(ValueError, match=r"task 'age'.*NaN at 1 labelled.*mask") as err:
        task.loss(torch.ones(3), torch.tensor([1.0, math.nan, 2.0]))
    assert "masks['age'] = False" in str(err.value)
    depth = depth_task("depth")
    target = torch.ones(1, 1, 2, 2)
    target[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="ignore value 0.0"):
        depth.loss(torch.ones(1, 1, 2, 2), target)
    # the metrics validate the same way
    with pytest.raises(ValueError, match="NaN"):
        task.new_metrics().update(torch.ones(2), torch.tensor([math.nan, 1.0]))


def test_nan_count_covers_labelled_samples_of_dense_targets_only() -> None:
    depth = depth_task("depth")
    target = torch.ones(3, 1, 2, 2)
    target[0, 0, 0, :] = math.nan  # 2 NaNs in a labelled sample
    target[1] = math.nan  # 4 NaNs in an unlabelled sample: ignored
    target[2, 0, 1, 1] = math.nan  # 1 more in a labelled sample
    mask = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="NaN at 3 labelled position"):
        depth.loss(torch.ones(3, 1, 2, 2), target, mask)
    target[0] = target[2] = 2.0
    loss = depth.loss(torch.ones(3, 1, 2, 2), target, mask)
    assert loss is not None
    assert float(loss) == pytest.approx(1.0)


def test_all_true_mask_equals_no_mask_and_integer_target_needs_no_mask() -> None:
    task = classification_task("digit", 3)
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.1, 3.0]])
    y = torch.tensor([0, 1])
    expected = -torch.log_softmax(z, dim=1)[torch.arange(2), y].mean()
    for mask in (None, torch.tensor([True, True]), torch.tensor([1, 1])):
        loss = task.loss(z, y, mask)
        assert loss is not None and float(loss) == pytest.approx(float(expected), rel=1e-6)
    second = task.loss(z, y, torch.tensor([False, True]))
    assert second is not None
    assert float(second) == pytest.approx(
        float(-torch.log_softmax(z[1], dim=0)[1]), rel=1e-6
    )


@pytest.mark.parametrize(
    ("task", "pred_shape", "target_shape"),
    [
        (classification_task("digit", 10), (4, 10), (4, 10)),
        (classification_task("digit", 10), (4, 10), (5,)),
        (segmentation_task("seg", 3), (2, 3, 8, 8), (2, 8, 7)),
        (regression_task("age"), (4, 1), (4,)),
        (depth_task("depth"), (2, 1, 4, 4), (2, 4, 4)),
    ],
    ids=lambda x: str(x) if isinstance(x, tuple) else None,
)
def test_shape_mismatch_names_task_and_both_shapes(task, pred_shape, target_shape) -> None:
    pred = torch.zeros(pred_shape)
    target = torch.zeros(target_shape, dtype=torch.long if task.kind != "depth" else torch.float)
    with pytest.raises(ValueError) as err:
        task.loss(pred, target)
    message = str(err.value)
    assert repr(task.name) in message
    assert str(list(pred_shape)) in message and str(list(target_shape)) in message


def test_mask_must_be_one_entry_per_sample() -> None:
    task = regression_task("age")
    with pytest.raises(ValueError, match=r"task 'age'.*one bool per sample, shape \[3\]"):
        task.loss(torch.ones(3), torch.ones(3), torch.ones(2, dtype=torch.bool))


def test_integer_mask_is_accepted() -> None:
    task = regression_task("age")
    loss = task.loss(torch.tensor([1.0, 5.0]), torch.zeros(2), torch.tensor([0, 1]))
    assert loss is not None
    assert float(loss) == pytest.approx(5.0)


def test_directions_primary_and_unknown_metric_errors() -> None:
    task = Task("t", l1_loss, RegressionErrors(), primary_metric="rmse", kind="regression")
    assert task.higher_is_better == {"mae": False, "rmse": False}
    assert task.primary_metric == "rmse"
    assert task.metric_names == ["mae", "rmse"]
    with pytest.raises(KeyError, match=r"task 't' has no metric 'acc'.*\['mae', 'rmse'\]"):
        task.higher_is_better["acc"]
    with pytest.raises(KeyError, match="task 't'"):
        task.is_higher_better("acc")
    with pytest.raises(ValueError, match=r"task 't': primary_metric 'acc'.*\['mae', 'rmse'\]"):
        Task("t", l1_loss, RegressionErrors(), primary_metric="acc")
    # the default primary metric is the first one
    assert Task("t", l1_loss, [RegressionErrors()]).primary_metric == "mae"


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="without '/'"):
        Task("a/b", l1_loss, RegressionErrors())
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        Task("t", None, RegressionErrors())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one metric"):
        Task("t", l1_loss, [])
    with pytest.raises(ValueError, match="both produce 'mae'"):
        Task("t", l1_loss, [RegressionErrors(), RegressionErrors()])
    with pytest.raises(ValueError, match="unknown kind"):
        Task("t", l1_loss, RegressionErrors(), kind="nope")  # type: ignore[arg-type]


def test_loss_fn_returning_non_scalar_is_reported() -> None:
    task = Task("t", lambda p, t, m: (p - t).abs(), RegressionErrors())
    with pytest.raises(ValueError, match="task 't': loss_fn must return a scalar"):
        task.loss(torch.ones(2), torch.zeros(2))


def test_new_metrics_are_independent_and_respect_masks() -> None:
    task = Task("cls", lambda p, t, m: None, Accuracy(3), kind="classification")
    a, b = task.new_metrics(), task.new_metrics()
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    a.update(logits, torch.tensor([0, 0, 2]), torch.tensor([True, False, True]))
    assert a.num_samples == 2
    assert a.compute() == {"accuracy": 1.0}
    with pytest.raises(EmptyMetricError, match="task 'cls': no labelled sample"):
        b.compute()
    b.update(logits[:1], torch.tensor([1]))  # single sample, wrong
    assert b.compute() == {"accuracy": 0.0}
    a.reset()
    with pytest.raises(EmptyMetricError, match="task 'cls'"):
        a.compute()


def test_task_metrics_wraps_empty_error_with_task_name() -> None:
    seg = segmentation_task("seg", 3)
    metrics = seg.new_metrics()
    metrics.update(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255))
    with pytest.raises(EmptyMetricError, match="task 'seg': segmentation: no valid"):
        metrics.compute()
