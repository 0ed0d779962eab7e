"""The hand-written metrics give torchmetrics' values exactly (same sums, same confusion matrix),
so replacing torchmetrics (the core needs torch and numpy only) changed no number."""

from __future__ import annotations

import pytest
import torch

from taskbalance.tasks.metrics import RegressionErrors, SegmentationMetrics

torchmetrics = pytest.importorskip("torchmetrics")


def test_regression_errors_equal_torchmetrics_over_several_batches() -> None:
    g = torch.Generator().manual_seed(0)
    mine = RegressionErrors()
    mae = torchmetrics.MeanAbsoluteError()
    mse = torchmetrics.MeanSquaredError(squared=False)
    mae.set_dtype(torch.float64)
    mse.set_dtype(torch.float64)
    for size in (7, 64, 3):
        p = torch.randn(size, 3, generator=g) * 10
        t = torch.randn(size, 3, generator=g)
        mine.update(p, t)
        mae.update(p.reshape(-1), t.reshape(-1))
        mse.update(p.reshape(-1), t.reshape(-1))
    out = mine.compute()
    assert out["mae"] == float(mae.compute())
    assert out["rmse"] == float(mse.compute())


def test_confusion_matrix_equals_torchmetrics_with_ignored_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    mine = SegmentationMetrics(5, ignore_index=255)
    ref = torchmetrics.classification.MulticlassConfusionMatrix(5, ignore_index=255)
    for _ in range(3):
        logits = torch.randn(2, 5, 4, 6, generator=g)
        target = torch.randint(0, 5, (2, 4, 6), generator=g)
        target[torch.rand(2, 4, 6, generator=g) < 0.3] = 255
        mine.update(logits, target)
        ref.update(logits, target)
    assert torch.equal(mine.confusion, ref.compute())
    mine.reset()
    with pytest.raises(RuntimeError, match="no labelled sample"):
        mine.compute()


def test_confusion_matrix_by_hand_and_bad_classes() -> None:
    metric = SegmentationMetrics(3, ignore_index=255)
    metric.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 2, 2, 255]]))
    expected = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    assert torch.equal(metric.confusion, expected)
    with pytest.raises(ValueError, match="outside 0..2"):
        metric.update(torch.tensor([[0]]), torch.tensor([[7]]))
