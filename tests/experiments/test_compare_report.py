"""Every number `compare` prints is recomputed here from its results.json alone (issue 9).

One tiny real comparison (2 methods x 2 seeds + 2 single-task baselines, 1 step each) writes
leaderboard.md and results.json; the test parses every cell of the table and the sharing line and
recomputes it with independent code (numpy/scipy, the Δm rule written out here).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from taskbalance.experiments.compare import CompareSettings, run_compare

FLOOR = 0.1  # docs/training.md "Δm%": higher-is-better baselines below 0.1 are left out


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(
        methods="ew,mgda",
        seeds=(0, 1),
        epochs=1,
        steps=2,
        size="tiny",
        out_dir=out,
        jobs=1,
        timing_rounds=3,
        timing_steps=1,
    )
    result = run_compare(settings, log=lambda _line: None)
    return result, json.loads((out / "results.json").read_text()), (out / "leaderboard.md")


def _table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    board = text.split("\n## Negative transfer")[0]  # the leaderboard, not the later section
    lines = [ln for ln in board.splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return split[0], {row[0]: row for row in split[1:]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _delta(metrics, baseline, hib) -> float:
    changes = []
    for task, ms in hib.items():
        for m, higher in ms.items():
            b = baseline[task][m]
            if b == 0 or not math.isfinite(b) or (higher and b < FLOOR):
                continue
            v = metrics[task][m]
            changes.append((-1 if higher else 1) * (v - b) / b * 100)
    return float(np.mean(changes)) if changes else math.nan


def test_every_printed_number_recomputes_from_results_json(compared) -> None:
    result, saved, md_path = compared
    text = md_path.read_text()
    assert text == result.markdown
    header, rows = _table(text)
    hib = saved["leaderboard"]["higher_is_better"]
    columns = [(t, m) for t, ms in hib.items() for m in ms]
    methods = saved["methods"]
    seeds = saved["seeds"]
    runs = {m: [r for r in saved["runs"] if r["method"] == m] for m in methods}
    for m in methods:
        assert [r["seed"] for r in runs[m]] == seeds
    base_runs = {t: [b for b in saved["baselines"] if b["task"] == t] for t in hib}
    # single-task baseline: mean over seeds of each task's own network
    base_seed = [{t: base_runs[t][k]["test"][t] for t in hib} for k in range(len(seeds))]
    baseline = {
        t: {m: float(np.mean([bs[t][m] for bs in base_seed])) for m in hib[t]} for t in hib
    }
    single = rows["single-task"]
    for i, (t, m) in enumerate(columns, start=1):
        assert single[i] == f"{baseline[t][m]:.4f}"
    col = {name: header.index(name) for name in header}
    deltas = {m: [_delta(r["test"], baseline, hib) for r in runs[m]] for m in methods}
    for method in methods:
        row = rows[method]
        for i, (t, m) in enumerate(columns, start=1):
            mean, std = _mean_std([r["test"][t][m] for r in runs[method]])
            assert row[i] == f"{mean:.4f} ± {std:.4f}"
        mean, std = _mean_std(deltas[method])
        cell = row[col["Δm% ↓"]]
        assert cell.rstrip("*†") == f"{mean:.2f} ± {std:.2f}"
        # paired t-tests over seeds
        vs_single = [
            _delta(r["test"], base_seed[k], hib) for k, r in enumerate(runs[method])
        ]
        p_single = stats.ttest_1samp(vs_single, 0.0).pvalue
        assert row[col["p vs single-task"]] == f"{p_single:.3f}"
        if method == "ew":
            assert row[col["p vs ew"]] == "-"
            p_ew = None
        else:
            p_ew = stats.ttest_rel(deltas[method], deltas["ew"]).pvalue
            assert row[col["p vs ew"]] == f"{p_ew:.3f}"
        marks = ("*" if p_ew is not None and p_ew < 0.05 else "") + (
            "†" if p_single < 0.05 else ""
        )
        assert cell.endswith(marks) and cell[len(cell.rstrip("*†")) :] == marks
        assert row[col["params"]] == f"{runs[method][0]['num_parameters']:,}"
    # mean rank: average over every metric column of the rank of the seed-mean (1 = best)
    means = {
        m: [np.mean([r["test"][t][k] for r in runs[m]]) for t, k in columns] for m in methods
    }
    ranks = np.zeros(len(methods))
    for j, (t, k) in enumerate(columns):
        scores = np.array([means[m][j] for m in methods])
        ranks += stats.rankdata(-scores if hib[t][k] else scores)
    for method, rank in zip(methods, ranks / len(columns), strict=True):
        assert rows[method][col["mean rank ↓"]] == f"{rank:.2f}"
    # time per step: medians and ranges of the interleaved timing pass
    timing = saved["timing"]["seconds"]
    med = {name: float(np.median(v)) for name, v in timing.items()}
    for method in methods:
        lo, hi = min(timing[method]), max(timing[method])
        cell = f"{1000 * med[method]:.1f} [{1000 * lo:.1f}–{1000 * hi:.1f}]"
        assert rows[method][col["ms/step"]] == cell
        assert rows[method][col["time vs ew"]] == f"{med[method] / med['ew']:.2f}x"
    single_seconds = sum(med[f"single-task/{t}"] for t in hib)
    assert single[col["ms/step"]] == f"{1000 * single_seconds:.1f}"
    assert single[col["time vs ew"]] == f"{single_seconds / med['ew']:.2f}x"
    base_params = sum(base_runs[t][0]["num_parameters"] for t in hib)
    assert single[col["params"]] == f"{base_params:,}"
    # the sharing line
    sharing = saved["sharing"]
    line = next(ln for ln in text.splitlines() if ln.startswith("Sharing saves"))
    mtl, st = sharing["multitask_parameters"], sharing["single_task_parameters"]
    assert f"{100 * (1 - mtl / st):.1f}% of the parameters" in line
    assert f"({mtl:,} in the multi-task model vs {st:,}" in line
    t_m, t_s = sharing["multitask_seconds"], sharing["single_task_seconds"]
    assert f"{1000 * t_m:.2f} ms vs {1000 * t_s:.2f} ms" in line
    assert f"{100 * (1 - t_m / t_s):.1f}% of the inference time" in line
    assert f"{t_s / t_m:.2f}x faster" in line
    # every number in the notes is one of the above or a stated constant
    board = text.split("\n## Negative transfer")[0]  # that section is checked on its own
    notes = board[board.index("Metrics on the") :]
    numbers = set(re.findall(r"\d+(?:\.\d+)?", notes))
    crit = f"{stats.t.ppf(0.975, len(seeds) - 1):.2f}"
    allowed = {str(len(seeds)), "0.05", "0.1", crit, "0", "1"}  # "baseline 0", "1 = best"
    allowed |= set(re.findall(r"\d+(?:\.\d+)?", line))
    allowed |= {str(saved["timing"]["rounds"])}
    assert numbers <= allowed, numbers - allowed


def test_negative_transfer_section_recomputes_from_results_json(compared) -> None:
    """Per method and task, the per-seed Δ% against the same seed's single-task run."""
    result, saved, _ = compared
    hib = saved["leaderboard"]["higher_is_better"]
    rows = {(r["method"], r["task"]): r for r in saved["negative_transfer"]}
    base = {(b["task"], b["seed"]): b["test"][b["task"]] for b in saved["baselines"]}
    expected: dict[tuple[str, str], list[float]] = {}
    for run in saved["runs"]:
        for task in hib:
            want = _delta({task: run["test"][task]}, {task: base[task, run["seed"]]},
                          {task: hib[task]})  # fmt: skip
            expected.setdefault((run["method"], task), []).append(want)
    # a task none of whose metrics enters Δ% (an untrained tiny baseline) has no row
    kept = {key: v for key, v in expected.items() if not any(math.isnan(x) for x in v)}
    assert set(rows) == set(kept) and rows
    for key, values in kept.items():
        assert rows[key]["values"] == pytest.approx(values)
    section = result.markdown.split("## Negative transfer")[1]
    for (method, task), row in rows.items():
        mean, std = _mean_std(row["values"])
        assert f"| {method} | {task} |" in section and f"{mean:+.2f} ± {std:.2f}" in section


def test_the_typed_result_round_trips_through_its_folder(compared) -> None:
    from taskbalance.experiments.compare import CompareResult

    result, saved, _ = compared
    # two methods x two seeds, one baseline per task and seed, each with its own folder
    assert [(r.method, r.seed) for r in result.runs] == [
        ("ew", 0), ("ew", 1), ("mgda", 0), ("mgda", 1)
    ]
    assert {(r.task, r.seed) for r in result.baselines} == {
        (t, s) for t in saved["leaderboard"]["higher_is_better"] for s in (0, 1)
    }
    assert all(r.out_dir and r.task is None for r in result.runs)
    assert saved["runs"] == [r.to_json() for r in result.runs]
    loaded = CompareResult.load(result.out_dir)
    assert loaded.runs == result.runs and loaded.baselines == result.baselines
    assert loaded.leaderboard == saved["leaderboard"] and loaded.markdown == result.markdown
