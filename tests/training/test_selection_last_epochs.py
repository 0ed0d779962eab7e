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


def test_a_run_with_final_epochs_reports_the_mean_of_its_last_epochs(tmp_path) -> None:
    from taskbalance.training import train

    config = {
        "benchmark": "multidigits",
        "size": "tiny",
        "epochs": 3,
        "steps": 1,
        "batch_size": 8,
        "final_epochs": 2,
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "tensorboard": False,
        "save_best": False,
    }
    result = train(config)
    last = result.history[-2:]
    assert result.test is not None
    for task in ("left", "right"):
        by_hand = (last[0]["test"][task]["accuracy"] + last[1]["test"][task]["accuracy"]) / 2
        assert result.test[task]["accuracy"] == pytest.approx(by_hand)
    assert "last 2 epoch" in result.selection
    import json

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"] == result.test
