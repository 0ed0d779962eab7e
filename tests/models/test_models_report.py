"""Sharing report: parameter counts (by hand for a tiny case) and timings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taskbalance.models import (
    ClassificationHead,
    MultiTaskModel,
    SmallCNN,
    count_parameters,
    sharing_report,
    single_task_models,
)


def test_count_parameters() -> None:
    lin = nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_parameters(tied) == 16


def test_report_hand_counted() -> None:
    model = MultiTaskModel(nn.Linear(3, 4), {"a": nn.Linear(4, 2), "b": nn.Linear(4, 1)})
    singles = model.single_task_copies()
    report = sharing_report(model, singles, torch.randn(2, 3), repeats=3)
    # MTL: backbone 3*4+4 = 16, heads 4*2+2 = 10 and 4+1 = 5 -> 31
    # singles: (16 + 10) + (16 + 5) = 47
    assert report["multitask_parameters"] == 31
    assert report["per_task_parameters"] == {"a": 26, "b": 21}
    assert report["single_task_parameters"] == 47
    assert report["parameters_saved"] == 16
    assert report["parameters_saved_fraction"] == pytest.approx(16 / 47)
    assert report["tasks"] == ["a", "b"]
    assert report["multitask_time_s"] > 0 and report["single_task_time_s"] > 0
    assert report["single_task_time_s"] == pytest.approx(sum(report["per_task_time_s"].values()))
    assert report["speedup"] == pytest.approx(
        report["single_task_time_s"] / report["multitask_time_s"]
    )


def test_report_cnn_and_factory() -> None:
    def factory(task: str) -> MultiTaskModel:
        return MultiTaskModel(SmallCNN(1, width=2, out_dim=4), {task: ClassificationHead(4, 3)})

    tasks = ["a", "b", "c"]
    model = MultiTaskModel(
        SmallCNN(1, width=2, out_dim=4), {t: ClassificationHead(4, 3) for t in tasks}
    )
    model.train()
    report = sharing_report(
        model, single_task_models(factory, tasks), torch.randn(2, 1, 8, 8), repeats=2
    )
    assert model.training  # mode restored
    assert report["multitask_parameters"] < report["single_task_parameters"]
    assert 0 < report["parameters_saved_fraction"] < 1


def test_report_errors() -> None:
    model = MultiTaskModel(nn.Linear(3, 4), {"a": nn.Linear(4, 2), "b": nn.Linear(4, 1)})
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        sharing_report(model, {"a": nn.Linear(3, 2)}, torch.randn(2, 3))
    with pytest.raises(ValueError, match="empty"):
        sharing_report(model, {}, torch.randn(2, 3))
    with pytest.raises(ValueError, match="repeats"):
        sharing_report(model, model.single_task_copies(), torch.randn(2, 3), repeats=0)
