"""Each figure function writes a valid, non-trivial PNG and returns its path."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from taskbalance.experiments import plots


def _history(offset: float, weights) -> list[dict]:
    return [
        {
            "epoch": e,
            "val": {"a": {"acc": 0.5 + 0.1 * e + offset}, "b": {"err": 2.0 - 0.2 * e}},
            "weights": weights(e),
        }
        for e in (1, 2, 3)
    ]


HISTORIES = {
    "ew": [_history(0.0, lambda e: {"a": 1.0, "b": 1.0}), _history(0.02, lambda e: [1.0, 1.0])],
    "uw": [_history(0.01, lambda e: {"a": 1.0 / e, "b": 0.5 * e})],
    "pcgrad": [_history(-0.01, lambda e: None)],
}


def _check_png(path, tmp_path):
    assert path.exists() and path.suffix == ".png" and path.parent == tmp_path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0.02  # not a blank canvas
    assert path.stat().st_size > 5000


def test_validation_curves(tmp_path):
    path = plots.plot_validation_curves(
        HISTORIES,
        {"a": "acc", "b": "err"},
        tmp_path / "curves.png",
        higher_is_better={"a": True, "b": False},
    )
    _check_png(path, tmp_path)


def test_task_weights_with_dicts_lists_and_none(tmp_path):
    _check_png(plots.plot_task_weights(HISTORIES, ["a", "b"], tmp_path / "weights.png"), tmp_path)


@pytest.mark.parametrize("errors", [None, {"ew": (0.01, 0.1), "uw": (0.0, 0.0), "x": (0, 0)}])
def test_pareto(tmp_path, errors):
    points = {"ew": (0.8, 1.0), "uw": (0.85, 1.2), "x": (0.7, 1.5)}
    path = plots.plot_pareto(
        points,
        ("a acc", "b err"),
        tmp_path / "pareto.png",
        higher_is_better=(True, False),
        errors=errors,
        reference=("single-task", (0.82, 1.1)),
    )
    _check_png(path, tmp_path)


def test_delta_bars(tmp_path):
    deltas = {"ew": (1.5, 0.4), "uw": (-2.0, 1.0), "pcgrad": (0.3, 0.0)}
    _check_png(plots.plot_delta_bars(deltas, tmp_path / "delta.png", seeds=3), tmp_path)


def test_delta_bar_labels_carry_the_leaderboard_marks():
    assert plots.delta_bar_labels(["ew", "mgda", "uw"], {"mgda": "*†", "uw": ""}) == [
        "ew",
        "mgda *†",
        "uw",
    ]
    assert plots.delta_bar_labels(["ew"], None) == ["ew"]
