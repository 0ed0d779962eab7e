"""Leaderboard arithmetic on hand-made inputs, against numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from taskbalance.experiments import report

HIB = {"a": {"acc": True}, "b": {"err": False}}


def _run(acc: float, err: float, seconds: float) -> dict:
    return {"test": {"a": {"acc": acc}, "b": {"err": err}}, "seconds_per_step": seconds}


def _single(task: str, metric: str, value: float, seconds: float) -> dict:
    return {"test": {task: {metric: value}}, "seconds_per_step": seconds}


# Single-task baselines: a.acc = 0.5 (both seeds), b.err = mean(1.5, 2.5) = 2.0.
BASELINES = {
    "a": [_single("a", "acc", 0.5, 0.004), _single("a", "acc", 0.5, 0.006)],
    "b": [_single("b", "err", 1.5, 0.006), _single("b", "err", 2.5, 0.006)],
}
METHODS = {
    "ew": [_run(0.625, 2.5, 0.010), _run(0.875, 1.5, 0.012)],
    "mgda": [_run(0.75, 3.0, 0.033), _run(0.75, 3.0, 0.033)],
    "pcgrad": [_run(0.5, 1.0, 0.022), _run(0.5, 1.0, 0.022)],
}


def test_mean_std_uses_sample_std():
    assert report.mean_std([2.0]) == (2.0, 0.0)
    mean, std = report.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof=1
    with pytest.raises(ValueError):
        report.mean_std([])


def test_delta_counts_every_metric_with_its_direction():
    metrics = {"a": {"acc": 0.9}, "b": {"rmse": 1.1, "mae": 0.5}}
    baseline = {"a": {"acc": 0.8}, "b": {"rmse": 1.0, "mae": 0.4}}
    hib = {"a": {"acc": True}, "b": {"rmse": False, "mae": False}}
    # acc: -(0.9-0.8)/0.8 = -12.5 %, rmse: +10 %, mae: +25 %  -> mean 7.5 %
    assert report.delta(metrics, baseline, hib) == pytest.approx(7.5)
    assert report.delta(baseline, baseline, hib) == 0.0


def test_aggregate_and_merge():
    agg = report.aggregate_metrics([{"a": {"acc": 0.625}}, {"a": {"acc": 0.875}}])
    assert agg["a"]["acc"]["mean"] == 0.75
    assert agg["a"]["acc"]["std"] == pytest.approx(0.25 / math.sqrt(2))
    merged = report.merge_task_metrics({"a": {"a": {"acc": 1.0}}, "b": {"b": {"err": 2.0}}})
    assert merged == {"a": {"acc": 1.0}, "b": {"err": 2.0}}
    with pytest.raises(ValueError, match="'b'"):
        report.merge_task_metrics({"b": {"a": {"acc": 1.0}}})


def test_mean_ranks_share_ties():
    table = {
        "ew": {"a": {"acc": 0.75}, "b": {"err": 2.0}},
        "mgda": {"a": {"acc": 0.75}, "b": {"err": 3.0}},
        "pcgrad": {"a": {"acc": 0.5}, "b": {"err": 1.0}},
    }
    # acc: ew, mgda tie for 1-2 -> 1.5 each, pcgrad 3; err: pcgrad 1, ew 2, mgda 3
    assert report.mean_ranks(table, HIB) == {"ew": 1.75, "mgda": 2.25, "pcgrad": 2.0}


def test_time_ratios():
    assert report.time_ratios({"ew": 0.01, "pcgrad": 0.03}) == pytest.approx(
        {"ew": 1.0, "pcgrad": 3.0}
    )
    assert report.time_ratios({"pcgrad": 0.03}) == {"pcgrad": None}


def test_pareto_front_respects_directions():
    points = {"A": (1.0, 1.0), "B": (2.0, 0.5), "C": (0.5, 0.5), "D": (2.0, 0.5)}
    assert report.pareto_front(points) == ["A", "B", "D"]  # equal points do not dominate
    assert report.pareto_front(points, (False, True)) == ["C", "A"]


def test_leaderboard_hand_computed():
    board = report.build_leaderboard(METHODS, BASELINES, HIB)
    assert board["baseline"]["metrics"] == {"a": {"acc": 0.5}, "b": {"err": 2.0}}
    rows = {r["method"]: r for r in board["rows"]}
    # ew seed0: acc -25 %, err +25 % -> 0; seed1: acc -75 %, err -25 % -> -50
    assert rows["ew"]["delta_m"]["values"] == pytest.approx([0.0, -50.0])
    assert rows["ew"]["delta_m"]["mean"] == pytest.approx(-25.0)
    assert rows["ew"]["delta_m"]["std"] == pytest.approx(50 / math.sqrt(2))
    # mgda: acc -50 %, err +50 % -> 0; pcgrad: acc 0, err -50 % -> -25
    assert rows["mgda"]["delta_m"]["mean"] == pytest.approx(0.0)
    assert rows["pcgrad"]["delta_m"]["mean"] == pytest.approx(-25.0)
    assert rows["pcgrad"]["delta_m"]["std"] == 0.0
    assert {m: r["mean_rank"] for m, r in rows.items()} == {
        "ew": 1.75,
        "mgda": 2.25,
        "pcgrad": 2.0,
    }
    assert rows["ew"]["time_ratio"] == pytest.approx(1.0)
    assert rows["mgda"]["time_ratio"] == pytest.approx(3.0)
    assert rows["pcgrad"]["time_ratio"] == pytest.approx(2.0)
    assert rows["ew"]["metrics"]["a"]["acc"]["mean"] == 0.75
    # single-task: 0.005 + 0.006 s per step, the same as ew
    assert board["baseline"]["seconds_per_step"] == pytest.approx(0.011)
    assert board["baseline"]["time_ratio"] == pytest.approx(1.0)


def test_leaderboard_needs_every_baseline():
    with pytest.raises(ValueError, match="'b'"):
        report.build_leaderboard(METHODS, {"a": BASELINES["a"]}, HIB)


def test_markdown_rows_sorted_by_delta():
    text = report.to_markdown(report.build_leaderboard(METHODS, BASELINES, HIB), title="toy")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header, *rows = lines
    assert "Δm% ↓" in header and "a acc ↑" in header and "b err ↓" in header
    names = [row.split("|")[1].strip() for row in rows]
    assert names[0] == "single-task"
    assert sorted(names[1:3]) == ["ew", "pcgrad"] and names[3] == "mgda"
    ew = next(r for r in rows if r.startswith("| ew "))
    assert "-25.00 ± 35.36" in ew and "0.7500 ± 0.1768" in ew and "1.75" in ew
    assert "2 seeds" in text


def _with_params(runs: dict, counts: dict) -> dict:
    return {
        name: [{**run, "num_parameters": counts[name]} for run in rs] for name, rs in runs.items()
    }


def test_parameter_count():
    assert report.parameter_count([{"num_parameters": 7}, {"num_parameters": 7}]) == 7
    assert report.parameter_count([{"num_parameters": 7}, {}]) is None
    assert report.parameter_count([]) is None


def test_leaderboard_parameters_single_task_is_the_sum():
    methods = _with_params(METHODS, {"ew": 1000, "mgda": 1000, "pcgrad": 1000})
    baselines = _with_params(BASELINES, {"a": 700, "b": 650})
    board = report.build_leaderboard(methods, baselines, HIB)
    assert {r["method"]: r["num_parameters"] for r in board["rows"]} == {
        "ew": 1000,
        "mgda": 1000,
        "pcgrad": 1000,
    }
    assert board["baseline"]["num_parameters"] == 1350  # 700 + 650
    lines = [ln for ln in report.to_markdown(board).splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    col = header.index("params")
    assert header[col + 1] == "ms/step"
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in lines}
    assert cells["single-task"][col] == "1,350"
    assert cells["ew"][col] == "1,000"
    # runs without num_parameters: no count, a dash in the table
    plain = report.build_leaderboard(METHODS, BASELINES, HIB)
    assert plain["baseline"]["num_parameters"] is None
    assert all(r["num_parameters"] is None for r in plain["rows"])
    row = next(ln for ln in report.to_markdown(plain).splitlines() if ln.startswith("| ew "))
    assert row.split("|")[1:-1][col].strip() == "-"


def test_sharing_summary_hand_computed():
    s = report.sharing_summary(1000, 1600, 0.002, 0.005)
    assert s["parameters_saved"] == 600
    assert s["parameters_saved_fraction"] == pytest.approx(0.375)  # 1 - 1000/1600
    assert s["time_saved_fraction"] == pytest.approx(0.6)  # 1 - 2/5
    assert s["speedup"] == pytest.approx(2.5)  # 5/2
    empty = report.sharing_summary(0, 0, 0.0, 0.0)
    assert empty["parameters_saved_fraction"] is None
    assert empty["time_saved_fraction"] is None and empty["speedup"] is None


def test_sharing_line_under_the_table():
    sharing = {**report.sharing_summary(1000, 1600, 0.002, 0.005), "tasks": ["a", "b"]}
    sharing["batch_size"] = 64
    line = report.sharing_line(sharing)
    assert line == (
        "Sharing saves 37.5% of the parameters (1,000 in the multi-task model vs 1,600 in "
        "2 single-task models) and 60.0% of the inference time (2.00 ms vs 5.00 ms per batch "
        "of 64, forward without grad; 2.50x faster)."
    )
    board = report.build_leaderboard(METHODS, BASELINES, HIB)
    text = report.to_markdown(board, sharing=sharing)
    assert text.rstrip("\n").splitlines()[-1] == line
    assert "Sharing saves" not in report.to_markdown(board)


def test_leaderboard_leaves_out_a_zero_baseline_and_names_it():
    """Issue 16, item 1: pingpong's event accuracy is 0 for the single-task baseline after a short
    run; the leaderboard used to raise ("the baseline of metric 'events/event_acc' is 0") after
    every run had trained. Now the metric is left out of Δm by the documented rule, and named."""
    hib = {"a": {"acc": True, "hit": True}, "b": {"err": False}}

    def run(acc: float, hit: float, err: float) -> dict:
        return {
            "test": {"a": {"acc": acc, "hit": hit}, "b": {"err": err}},
            "seconds_per_step": 0.01,
        }

    baselines = {
        "a": [{"test": {"a": {"acc": 0.5, "hit": 0.0}}, "seconds_per_step": 0.01}],
        "b": [{"test": {"b": {"err": 2.0}}, "seconds_per_step": 0.01}],
    }
    board = report.build_leaderboard({"ew": [run(0.6, 0.3, 1.0)]}, baselines, hib)
    assert board["excluded"] == {"a/hit": "baseline is 0"}
    # acc: -(0.6 - 0.5)/0.5 = -20 %, err: (1 - 2)/2 = -50 % -> -35 (hit left out)
    assert board["rows"][0]["delta_m"]["mean"] == pytest.approx(-35.0)
    text = report.to_markdown(board)
    assert "a hit ↑ (not in Δm)" in text and "Not in Δm: a/hit (baseline is 0)" in text


def test_paired_tests_match_scipy_and_mark_rows():
    from scipy import stats

    board = report.build_leaderboard(METHODS, BASELINES, HIB)
    rows = {r["method"]: r for r in board["rows"]}
    # pcgrad vs ew, per seed: Δm pcgrad (-25, -25) minus ew (0, -50) = (-25, +25)
    vs_ew = rows["pcgrad"]["vs_reference"]
    assert vs_ew["values"] == pytest.approx([-25.0, 25.0])
    expected = stats.ttest_rel([-25.0, -25.0], [0.0, -50.0])
    assert vs_ew["t"] == pytest.approx(expected.statistic)
    assert vs_ew["p"] == pytest.approx(expected.pvalue)
    assert rows["ew"]["vs_reference"] is None
    # mgda vs single-task of the same seed: seed0 base (0.5, 1.5): acc -50 %, err +100 % -> 25;
    # seed1 base (0.5, 2.5): acc -50 %, err +20 % -> -15
    single = rows["mgda"]["vs_single_task"]
    assert single["values"] == pytest.approx([25.0, -15.0])
    assert single["p"] == pytest.approx(stats.ttest_1samp([25.0, -15.0], 0.0).pvalue)
    assert report.paired_t_test([1.0]) is None
    constant, zero = report.paired_t_test([2.0, 2.0]), report.paired_t_test([0.0, 0.0])
    assert constant is not None and constant["p"] == 0.0
    assert zero is not None and zero["p"] == 1.0
    assert report.critical_t(3) == pytest.approx(stats.t.ppf(0.975, 2))
    row = {"vs_reference": {"p": 0.01}, "vs_single_task": {"p": 0.2}}
    assert report.significance_marks(row) == "*"


def _seeded(run: dict, seed: int) -> dict:
    return {**run, "config": {"seed": seed}}


def test_paired_tests_pair_runs_of_the_same_seed_in_any_order():
    """Runs that arrive in another seed order (e.g. read back from a folder) are paired seed by
    seed with ew and with the baselines, not position by position."""
    methods = {m: [_seeded(r, s) for s, r in enumerate(runs)] for m, runs in METHODS.items()}
    baselines = {t: [_seeded(r, s) for s, r in enumerate(runs)] for t, runs in BASELINES.items()}
    ordered = report.build_leaderboard(methods, baselines, HIB)
    # Only ew and b's baseline arrive reversed: position pairing would mix seeds.
    shuffled = report.build_leaderboard(
        {**methods, "ew": methods["ew"][::-1]},
        {"a": baselines["a"], "b": baselines["b"][::-1]},
        HIB,
    )
    want = {r["method"]: r for r in ordered["rows"]}
    for row in shuffled["rows"]:
        ref = want[row["method"]]
        assert sorted(row["seed_ids"]) == [0, 1]
        by_seed = dict(zip(ref["seed_ids"], ref["vs_single_task"]["values"]))
        assert row["vs_single_task"]["values"] == pytest.approx(
            [by_seed[s] for s in row["seed_ids"]]
        )
        if row["method"] != "ew":
            assert row["vs_reference"]["values"] == pytest.approx(ref["vs_reference"]["values"])
            assert row["vs_reference"]["p"] == pytest.approx(ref["vs_reference"]["p"])
    assert shuffled["baseline"]["metrics"] == ordered["baseline"]["metrics"]


def test_runs_that_share_a_seed_are_refused():
    methods = {"ew": [_seeded(r, 0) for r in METHODS["ew"]]}
    with pytest.raises(ValueError, match="share a seed"):
        report.build_leaderboard(methods, BASELINES, HIB)
