"""Δm% against worked examples computed by hand."""

from __future__ import annotations

import math

import pytest

import taskbalance
from taskbalance.tasks import (
    MIN_HIGHER_BASELINE,
    delta_breakdown,
    delta_m,
    depth_task,
    flatten_results,
    metric_directions,
    metric_groups,
    segmentation_task,
    task_delta,
)

DIRS = {"seg/miou": True, "depth/abs_err": False, "depth/rel_err": False}


def test_worse_on_every_metric_is_positive() -> None:
    # miou:    -(0.40 - 0.50) / 0.50 * 100 = +20
    # abs_err: +(0.50 - 0.40) / 0.40 * 100 = +25
    # mean = (20 + 25) / 2 = 22.5
    results = {"seg/miou": 0.40, "depth/abs_err": 0.50}
    baseline = {"seg/miou": 0.50, "depth/abs_err": 0.40}
    assert delta_m(results, baseline, DIRS) == pytest.approx(22.5)


def test_mixed_example_and_libmtl_per_task_variant() -> None:
    # miou:    -(0.55 - 0.50) / 0.50 * 100 = -10
    # abs_err: +(0.36 - 0.40) / 0.40 * 100 = -10
    # rel_err: +(0.15 - 0.12) / 0.12 * 100 = +25
    # Maninis (mean over metrics): (-10 - 10 + 25) / 3 = 5/3
    # LibMTL (mean within task, then over tasks): seg = -10, depth = (-10 + 25) / 2 = 7.5,
    #   (-10 + 7.5) / 2 = -1.25
    results = {"seg/miou": 0.55, "depth/abs_err": 0.36, "depth/rel_err": 0.15}
    baseline = {"seg/miou": 0.50, "depth/abs_err": 0.40, "depth/rel_err": 0.12, "extra": 1.0}
    assert delta_m(results, baseline, DIRS) == pytest.approx(5 / 3)
    per_task = {"seg": ["seg/miou"], "depth": ["depth/abs_err", "depth/rel_err"]}
    assert delta_m(results, baseline, DIRS, per_task=per_task) == pytest.approx(-1.25)


def test_equal_to_baseline_is_zero_and_improvement_negative() -> None:
    base = {"a": 2.0, "b": 3.0}
    dirs = {"a": True, "b": False}
    assert delta_m(base, base, dirs) == 0.0
    # a: -(2.2 - 2) / 2 * 100 = -10 ; b: (2.7 - 3) / 3 * 100 = -10 -> -10
    assert delta_m({"a": 2.2, "b": 2.7}, base, dirs) == pytest.approx(-10.0)


def test_negative_baseline_uses_signed_division() -> None:
    # lower is better, B = -2, M = -3: (+1)(-3 - -2)/(-2) * 100 = +50 (the formula as published)
    assert delta_m({"x": -3.0}, {"x": -2.0}, {"x": False}) == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("results", "baseline", "dirs", "match"),
    [
        ({"m": 1.0}, {}, {"m": True}, "'m' is missing from the baseline"),
        ({"m": 1.0}, {"m": 1.0}, {}, "direction of metric 'm'"),
        ({"m": 1.0}, {"m": 0.0}, {"m": True}, r"no metric can enter Δm \(m: baseline is 0\)"),
        ({"m": math.nan}, {"m": 1.0}, {"m": True}, "result of metric 'm' is not finite"),
        ({"m": 1.0}, {"m": math.inf}, {"m": True}, r"m: baseline inf is not finite"),
        ({}, {"m": 1.0}, {"m": True}, "no metric"),
    ],
)
def test_errors_name_the_metric(results, baseline, dirs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        delta_m(results, baseline, dirs)


def test_per_task_errors() -> None:
    base = {"a": 1.0}
    dirs = {"a": True}
    with pytest.raises(ValueError, match="'b' is missing from the results"):
        delta_m(base, base, dirs, per_task={"t": ["a", "b"]})
    with pytest.raises(ValueError, match="non-empty list"):
        delta_m(base, base, dirs, per_task={"t": []})
    with pytest.raises(ValueError, match="non-empty list"):
        delta_m(base, base, dirs, per_task={"t": "a"})
    with pytest.raises(ValueError, match="no task"):
        delta_m(base, base, dirs, per_task={})


def test_helpers_build_qualified_names_from_tasks() -> None:
    tasks = [segmentation_task("seg", 3), depth_task("depth")]
    dirs = metric_directions(tasks)
    assert dirs == {
        "seg/miou": True,
        "seg/pixel_acc": True,
        "depth/abs_err": False,
        "depth/rel_err": False,
    }
    groups = metric_groups(tasks)
    assert groups == {
        "seg": ["seg/miou", "seg/pixel_acc"],
        "depth": ["depth/abs_err", "depth/rel_err"],
    }
    flat = flatten_results(
        {"seg": {"miou": 0.5, "pixel_acc": 0.8}, "depth": {"abs_err": 0.4, "rel_err": 0.1}}
    )
    assert set(flat) == set(dirs)
    # identical to baseline except miou 0.5 -> 0.6: -(0.1/0.5)*100 = -20; /4 metrics = -5
    better = dict(flat, **{"seg/miou": 0.6})
    assert delta_m(better, flat, dirs) == pytest.approx(-5.0)
    # per task: seg = (-20 + 0)/2 = -10, depth = 0 -> -5
    assert delta_m(better, flat, dirs, per_task=groups) == pytest.approx(-5.0)


def test_delta_m_is_exported_at_the_top_level() -> None:
    assert taskbalance.delta_m is delta_m
    assert "delta_m" in taskbalance.__all__
    assert taskbalance.delta_m({"a": 2.0}, {"a": 4.0}, {"a": False}) == pytest.approx(-50.0)


def test_rule_leaves_out_zero_and_near_zero_higher_baselines_and_names_them() -> None:
    # events/event_acc has a 0 baseline (pingpong after one step), seg/miou a near-zero one;
    # the error metric with a tiny baseline stays in (a small error is a good baseline).
    results = {"events/event_acc": 0.3, "seg/miou": 0.04, "seg/pixel_acc": 0.6, "d/err": 0.002}
    baseline = {"events/event_acc": 0.0, "seg/miou": 0.02, "seg/pixel_acc": 0.5, "d/err": 0.001}
    dirs = {"events/event_acc": True, "seg/miou": True, "seg/pixel_acc": True, "d/err": False}
    out = delta_breakdown(results, baseline, dirs)
    assert set(out.excluded) == {"events/event_acc", "seg/miou"}
    assert 0.02 < MIN_HIGHER_BASELINE <= 0.5
    # pixel_acc: -(0.6-0.5)/0.5 = -20 ; err: +(0.002-0.001)/0.001 = +100 -> mean 40
    assert out.changes == pytest.approx({"seg/pixel_acc": -20.0, "d/err": 100.0})
    assert out.overall == pytest.approx(40.0)
    assert out.per_task == {"events": None, "seg": pytest.approx(-20.0), "d": pytest.approx(100.0)}
    with pytest.warns(UserWarning, match="events/event_acc.*seg/miou"):
        assert delta_m(results, baseline, dirs) == pytest.approx(40.0)
    # the floor can be switched off: then miou's +100 % improvement counts
    with pytest.warns(UserWarning, match="events/event_acc"):
        value = delta_m(results, baseline, dirs, min_higher_baseline=0.0)
    assert value == pytest.approx((-100.0 - 20.0 + 100.0) / 3)


def test_breakdown_per_task_is_mean_of_exactly_its_listed_metrics() -> None:
    metrics = {"n": {"mean": 57.0, "median": 50.0, "w22": 0.0721, "w30": 0.20}}
    base = {"n": {"mean": 55.0, "median": 52.0, "w22": 0.0218, "w30": 0.10}}
    hib = {"n": {"mean": False, "median": False, "w22": True, "w30": True}}
    out = task_delta(metrics, base, hib)
    assert out.groups == {"n": ["n/mean", "n/median", "n/w30"]}
    expected = [2 / 55 * 100, -2 / 52 * 100, -(0.10 / 0.10) * 100]
    assert out.per_task["n"] == pytest.approx(sum(expected) / 3)
    assert out.overall == pytest.approx(sum(expected) / 3)


def test_breakdown_non_finite_value_gives_nan_not_an_error() -> None:
    out = task_delta({"a": {"x": math.nan}}, {"a": {"x": 1.0}}, {"a": {"x": False}})
    assert math.isnan(out.overall) and out.excluded == {}
