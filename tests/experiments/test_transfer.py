"""Negative-transfer section: per-task Δ% per seed, paired by seed, verdicts by the paired
t-test, checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from taskbalance.experiments.transfer import negative_transfer, transfer_markdown

HIB = {"a": {"acc": True}, "b": {"err": False}}


def _run(seed: int, acc: float, err: float) -> dict:
    return {"config": {"seed": seed}, "test": {"a": {"acc": acc}, "b": {"err": err}}}


def _single(seed: int, task: str, value: float) -> dict:
    metric = "acc" if task == "a" else "err"
    return {"config": {"seed": seed}, "test": {task: {metric: value}}}


BASELINES = {
    "a": [_single(0, "a", 0.80), _single(1, "a", 0.82), _single(2, "a", 0.78)],
    "b": [_single(2, "b", 0.60), _single(0, "b", 0.50), _single(1, "b", 0.40)],  # any order
}


def test_verdicts_against_hand_computed_numbers() -> None:
    runs = {
        # acc: -(M - B)/B·100 = +10, +5, +10 ; err: (M - B)/B·100 = -10, +10, -5
        "m": [_run(1, 0.779, 0.44), _run(0, 0.72, 0.45), _run(2, 0.702, 0.57)],
        "one": [_run(0, 0.88, 0.5)],
    }
    rows = {(r.method, r.task): r for r in negative_transfer(runs, BASELINES, HIB)}
    a = rows["m", "a"]
    assert sorted(a.values) == pytest.approx([5.0, 10.0, 10.0])
    assert a.mean == pytest.approx(25 / 3)
    assert a.std == pytest.approx(math.sqrt(25 / 3))  # sample std of (10, 5, 10)
    # t = mean / (std / √3) = 5; two-sided p with 2 degrees of freedom: 1 - t/√(t² + 2)
    assert a.test is not None and a.test["t"] == pytest.approx(5.0)
    assert a.test["p"] == pytest.approx(1 - 5 / math.sqrt(27))
    assert a.verdict == "loses"
    assert a.multi["acc"]["mean"] == pytest.approx((0.72 + 0.779 + 0.702) / 3)
    assert a.single["acc"]["mean"] == pytest.approx(0.80)
    b = rows["m", "b"]
    assert sorted(b.values) == pytest.approx([-10.0, -5.0, 10.0])
    assert b.mean == pytest.approx(-5 / 3) and b.verdict == "within noise"
    one = rows["one", "a"]
    assert one.values == pytest.approx([-10.0]) and one.test is None
    assert one.verdict == "one seed"
    md = "\n".join(transfer_markdown(list(rows.values())))
    assert "## Negative transfer" in md and "**loses**" in md
    assert "Tasks that lose beyond the seed noise: a (m)." in md
    assert "+8.33 ± 2.89" in md


def test_a_clear_gain_and_no_loser() -> None:
    runs = {"g": [_run(0, 0.88, 0.5), _run(1, 0.902, 0.4), _run(2, 0.858, 0.6)]}  # acc -10 %
    rows = negative_transfer(runs, BASELINES, HIB)
    a = next(r for r in rows if r.task == "a")
    assert a.values == pytest.approx([-10.0] * 3) and a.verdict == "gains"  # no spread: p = 0
    b = next(r for r in rows if r.task == "b")
    assert b.values == pytest.approx([0.0] * 3) and b.verdict == "within noise"
    assert "No task loses beyond the seed noise." in transfer_markdown(rows)


def test_seeds_without_a_baseline_are_left_out() -> None:
    runs = {"m": [_run(0, 0.72, 0.45), _run(7, 0.1, 9.0)]}  # seed 7 has no baseline
    rows = negative_transfer(runs, BASELINES, HIB)
    assert [r.values for r in rows] == [pytest.approx([10.0]), pytest.approx([-10.0])]


def test_one_seed_claims_no_verdict() -> None:
    # +10 % worse on one seed: no noise estimate, so the report must not say "no task loses"
    rows = negative_transfer({"m": [_run(0, 0.72, 0.45)]}, BASELINES, HIB)
    assert {r.verdict for r in rows} == {"one seed"}
    md = "\n".join(transfer_markdown(rows))
    assert "No task loses" not in md
    assert "one seed: no noise estimate, so no verdict; run 2 or more seeds" in md
