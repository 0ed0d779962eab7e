"""Precise BatchNorm statistics: values against numpy, frozen layers untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from taskbalance.training.batchnorm import recalibrate_batchnorm


def _stats(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm layer's running mean and variance (it tracks them)."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    assert bn.running_mean is not None and bn.running_var is not None
    return bn.running_mean, bn.running_var


def test_running_statistics_are_the_average_of_the_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    batches = [torch.randn(5, 3) * (k + 1) for k in range(3)]
    model.eval()
    used = recalibrate_batchnorm(model, batches, max_batches=10)
    assert used == 3 and not model.training
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm1d)
    assert bn.momentum == 0.1  # restored
    with torch.no_grad():
        feats = [model[0](x).numpy().astype(np.float64) for x in batches]
    # equal-weight average of per-batch mean and unbiased variance (momentum=None in torch)
    mean = np.mean([f.mean(0) for f in feats], axis=0)
    var = np.mean([f.var(0, ddof=1) for f in feats], axis=0)
    assert _stats(bn)[0].numpy() == pytest.approx(mean, rel=1e-5, abs=1e-6)
    assert _stats(bn)[1].numpy() == pytest.approx(var, rel=1e-5, abs=1e-6)
    assert recalibrate_batchnorm(model, batches, max_batches=2) == 2


def test_layers_kept_in_eval_mode_and_empty_input_keep_their_statistics() -> None:
    class Frozen(nn.Sequential):
        def train(self, mode: bool = True):  # a frozen part: BN stays in eval mode
            super().train(mode)
            self[1].eval()
            return self

    model = Frozen(nn.Linear(2, 2), nn.BatchNorm1d(2))
    before = _stats(model[1])[0].clone()
    assert recalibrate_batchnorm(model, [torch.randn(4, 2)], max_batches=1) == 1
    assert torch.equal(_stats(model[1])[0], before)
    plain = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    _stats(plain[1])[0].fill_(3.0)
    assert recalibrate_batchnorm(plain, [], max_batches=4) == 0
    assert torch.all(_stats(plain[1])[0] == 3.0)
