"""The "mean of the last K epochs" rule of the MTAN protocol, against hand-computed means."""

from __future__ import annotations

import pytest

from taskbalance.training.selection import mean_of_last_epochs


def _history(values: list[float]) -> list[dict]:
    return [
        {"epoch": e + 1, "test": {"seg": {"miou": v, "acc": 2 * v}}, "val": {"seg": {"miou": 0.0}}}
        for e, v in enumerate(values)
    ]


def test_mean_of_the_last_k_epochs_by_hand() -> None:
    means, used = mean_of_last_epochs(_history([0.1, 0.2, 0.4, 0.7]), 3)
    assert used == 3
    assert means["seg"]["miou"] == pytest.approx((0.2 + 0.4 + 0.7) / 3)
    assert means["seg"]["acc"] == pytest.approx((0.4 + 0.8 + 1.4) / 3)
    val, _ = mean_of_last_epochs(_history([0.1, 0.2]), 1, split="val")
    assert val == {"seg": {"miou": 0.0}}


def test_fewer_epochs_than_k_average_all_of_them() -> None:
    means, used = mean_of_last_epochs(_history([1.0, 3.0]), 10)
    assert used == 2 and means["seg"]["miou"] == pytest.approx(2.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k .* >= 1"):
        mean_of_last_epochs(_history([1.0]), 0)
    with pytest.raises(ValueError, match="no epoch"):
        mean_of_last_epochs([{"epoch": 1}], 10)
