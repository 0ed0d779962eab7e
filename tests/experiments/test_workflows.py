"""Workflows for partial labels: argument parsing and an end-to-end comparison on a tiny size."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from taskbalance.data import load_benchmark
from taskbalance.experiments.workflows import (
    REFERENCE,
    WORKFLOWS,
    WorkflowComparison,
    _deltas,
    compare_workflows,
    parse_labels,
    parse_workflows,
    workflow_table,
)
from taskbalance.tasks import MIN_HIGHER_BASELINE, depth_task, normal_task, segmentation_task

TINY = {"base": "tiny", "train": 24, "val": 8, "test": 8}


def test_parse_labels() -> None:
    assert parse_labels("depth=0.2,segmentation=0.5") == {"depth": 0.2, "segmentation": 0.5}
    assert parse_labels(" depth = 20% , ") == {"depth": 0.2}
    assert parse_labels("depth=1") == {"depth": 1.0}
    assert parse_labels(None) is None and parse_labels("") is None and parse_labels("none") is None
    assert parse_labels({"a": 0.5}) == {"a": 0.5}
    for bad, match in [
        ("depth", "TASK=FRACTION"),
        ("=0.2", "TASK=FRACTION"),
        ("depth=abc", "number"),
        ("depth=0", r"\(0, 1\]"),
        ("depth=1.5", r"\(0, 1\]"),
        ("depth=nan", r"\(0, 1\]"),
        ("depth=0.2,depth=0.3", "twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_labels(bad)


def test_parse_workflows() -> None:
    assert parse_workflows("masked,staged,annotated") == WORKFLOWS
    assert parse_workflows("staged") == ("staged",)
    assert parse_workflows(None) == WORKFLOWS == parse_workflows("all")
    assert parse_workflows(["annotated", "masked"]) == ("annotated", "masked")
    with pytest.raises(ValueError, match="unknown workflow"):
        parse_workflows("masked,semi")
    with pytest.raises(ValueError, match="twice"):
        parse_workflows("masked,masked")
    with pytest.raises(ValueError, match="no workflow"):
        parse_workflows(",")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return load_benchmark("scenes", size=TINY, cache_dir=tmp_path_factory.mktemp("cache"))


def test_compare_workflows_end_to_end(bench, tmp_path) -> None:
    lines: list[str] = []
    result = compare_workflows(
        bench,
        "depth=0.25",
        epochs=1,
        steps=1,
        batch_size=8,
        teacher_epochs=1,
        threshold=0.5,
        out_dir=tmp_path,
        log=lines.append,
    )
    names = [r.workflow for r in result.rows]
    assert names == [REFERENCE, "masked", "staged", "annotated"]
    table = result.markdown
    for name in ("masked", "staged", "annotated", REFERENCE, "Δm%"):
        assert name in table
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 5  # header + 4 rows
    assert_table_recomputes(table, bench.tasks)
    ref = result.row(REFERENCE)
    assert ref.delta_m == pytest.approx(0.0)
    # Δm% of each workflow recomputed by hand from the stored metrics: the mean over every
    # metric with a non-zero reference of ±(value - reference) / reference * 100.
    hib = {t.name: t.higher_is_better for t in bench.tasks}
    for row in result.rows:
        changes: dict[str, list[float]] = {}
        for task, metrics in hib.items():
            for metric, higher in metrics.items():
                value, base = row.test[task][metric], ref.test[task][metric]
                if base == 0 or not math.isfinite(base) or (higher and base < MIN_HIGHER_BASELINE):
                    continue  # the documented rule (taskbalance.tasks.DELTA_RULE)
                sign = -1.0 if higher else 1.0
                changes.setdefault(task, []).append(sign * (value - base) / base * 100.0)
        every = [c for values in changes.values() for c in values]
        assert row.delta_m == pytest.approx(sum(every) / len(every))
        for task in hib:
            if task in changes:
                mean = sum(changes[task]) / len(changes[task])
                assert row.delta_per_task[task] == pytest.approx(mean)
            else:
                assert row.delta_per_task[task] is None
    for row in result.rows:
        assert set(row.test) == {"segmentation", "depth", "normals"}
        assert row.delta_m is None or math.isfinite(row.delta_m)
        assert set(row.delta_per_task) == {"segmentation", "depth", "normals"}
    # files: table, results, the pseudo-labels of the annotated workflow, every run's folder
    assert (tmp_path / "workflows.md").read_text() == table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["labels"] == {"depth": 0.25}
    assert [r["workflow"] for r in saved["rows"]] == names
    assert saved["rows"] == [row.to_json() for row in result.rows]
    loaded = WorkflowComparison.load(tmp_path)
    assert loaded.rows == result.rows and loaded.markdown == table
    assert "depth" in saved["annotation"]
    assert (tmp_path / "runs" / "annotated" / "pseudo_labels.pt").is_file()
    for run in ("full", "masked", "staged", "annotated"):
        assert (tmp_path / "runs" / run).is_dir()
    assert any("staged" in ln for ln in lines)
    _rerun_continues_and_trains_nothing(bench, tmp_path, result.rows)


def _rerun_continues_and_trains_nothing(bench, out_dir, rows) -> None:
    """A second call into the same folder continues from every run's checkpoint: nothing is
    trained again and the rows are the same; other settings are refused."""
    from taskbalance.training import Trainer

    options: dict[str, Any] = dict(epochs=1, steps=1, batch_size=8, teacher_epochs=1, threshold=0.5)
    with pytest.MonkeyPatch.context() as patch:
        def no_training(self):
            raise AssertionError("a finished run was trained again")

        patch.setattr(Trainer, "train_epoch", no_training)
        again = compare_workflows(bench, "depth=0.25", out_dir=out_dir, log=None, **options)
    strip = lambda rs: [replace(r, seconds=0.0) for r in rs]  # noqa: E731
    assert strip(again.rows) == strip(rows)
    with pytest.raises(ValueError, match="overwrite"):
        compare_workflows(bench, "depth=0.25", out_dir=out_dir, log=None, **{**options, "steps": 2})


def test_compare_workflows_bad_input(bench) -> None:
    with pytest.raises(ValueError, match="partially labelled"):
        compare_workflows(bench, "", epochs=1, log=None)
    with pytest.raises(ValueError, match="keep every label"):
        compare_workflows(bench, {"depth": 1.0}, epochs=1, log=None)
    with pytest.raises(ValueError, match="unknown task"):
        compare_workflows(bench, {"height": 0.5}, epochs=1, log=None)
    with pytest.raises(ValueError, match="unknown workflow"):
        compare_workflows(bench, {"depth": 0.5}, workflows="masked,magic", epochs=1, log=None)


def _table(markdown: str) -> tuple[list[str], list[list[str]]]:
    rows = [
        [c.strip() for c in ln.strip().strip("|").split("|")]
        for ln in markdown.splitlines()
        if ln.startswith("| ")
    ]
    return rows[0], rows[1:]


def assert_table_recomputes(markdown: str, tasks, rows=None) -> None:
    """Every Δ the table prints is the mean of the relative changes of exactly the metric columns
    it shows for that task (those marked ° excluded), recomputed from the printed cells against
    the reference row (first row), to the precision printed."""
    header, body = _table(markdown)
    reference = body[0]
    for task in tasks:
        cols = [i for i, h in enumerate(header) if h.split(" ")[0] == task.name and "Δ" not in h]
        entering = [i for i in cols if not header[i].endswith("°")]
        assert {header[i].split(" ")[1] for i in cols} == set(task.higher_is_better)
        delta_col = header.index(f"Δ {task.name} %")
        for row in body:
            changes = []
            for i in entering:
                metric = header[i].split(" ")[1]
                value, base = float(row[i]), float(reference[i])
                sign = -1.0 if task.higher_is_better[metric] else 1.0
                changes.append(sign * (value - base) / base * 100.0)
            if not changes:
                assert row[delta_col] == "-"
                continue
            # cells carry 4 significant digits: allow the rounding that implies
            assert float(row[delta_col]) == pytest.approx(sum(changes) / len(changes), abs=0.05)


def test_contradictory_workflow_row_is_explained_by_its_table() -> None:
    """Issue 9, defect 3: the staged row printed normals mean angle 56.99 vs 55.61 (worse) with
    'Δ normals %' = -55.64 because the Δ averaged five metrics, among them 'within 22.5°' going
    from an untrained 0.0218 to 0.0721 (+230 %), while the table showed only the mean angle."""
    tasks = [segmentation_task("segmentation", 5), depth_task("depth"), normal_task("normals")]
    full = {
        "segmentation": {"miou": 0.06238, "pixel_acc": 0.31},
        "depth": {"abs_err": 0.52, "rel_err": 0.30},
        "normals": {
            "mean_angle": 55.61,
            "median_angle": 54.2,
            "within_11.25": 0.0043,
            "within_22.5": 0.0218,
            "within_30": 0.061,
        },
    }
    staged = {
        "segmentation": {"miou": 0.06238, "pixel_acc": 0.31},
        "depth": {"abs_err": 0.55, "rel_err": 0.33},
        "normals": {
            "mean_angle": 56.99,
            "median_angle": 52.0,
            "within_11.25": 0.0151,
            "within_22.5": 0.0721,
            "within_30": 0.14,
        },
    }
    rows: list[dict[str, Any]] = []
    for name, metrics in ((REFERENCE, full), ("staged", staged)):
        overall, per_task, skipped = _deltas(metrics, full, tasks)
        rows.append(
            {
                "workflow": name,
                "test": metrics,
                "delta_m": overall,
                "delta_per_task": per_task,
                "delta_skipped": skipped,
                "seconds": 1.0,
            }
        )
    table = workflow_table(rows, tasks)
    assert_table_recomputes(table, tasks)
    # the near-zero fractions are left out by the documented rule, and named
    within = {"normals/within_11.25", "normals/within_22.5", "normals/within_30"}
    assert set(rows[1]["delta_skipped"]) == within | {"segmentation/miou"}
    assert "normals/within_22.5" in table and "not in Δm" in table
    # what is left of normals: mean angle +2.48 % (worse), median -4.06 %
    expected = [(56.99 - 55.61) / 55.61 * 100, (52.0 - 54.2) / 54.2 * 100]
    assert rows[1]["delta_per_task"]["normals"] == pytest.approx(sum(expected) / 2)


def test_workflows_whose_models_differ_report_different_segmentation(bench) -> None:
    """Issue 9, defect 4: every workflow reported the same mIoU (to all digits) although the
    models differed: in eval mode BatchNorm used running statistics of earlier weights, and the
    segmentation head predicted one class for every pixel. The trainer now re-estimates them for
    the weights it evaluates (taskbalance.training.batchnorm)."""
    result = compare_workflows(
        bench, "depth=0.25", "masked", epochs=1, steps=3, batch_size=8, log=None
    )
    full, masked = result.row(REFERENCE).test, result.row("masked").test
    assert full["depth"] != masked["depth"]  # the two models differ
    assert full["segmentation"] != masked["segmentation"]


def test_interrupted_workflows_continue_and_end_as_uninterrupted(bench, tmp_path, monkeypatch):
    """Every workflow run goes through the one runner: interrupted after its third run (inside
    the staged schedule), the comparison reruns into the same folder, reuses the finished runs
    and ends with the rows of an uninterrupted one."""
    import taskbalance.training.runner as runner

    options: dict[str, Any] = dict(
        epochs=1, steps=1, batch_size=8, log=None, workflows="masked,staged"
    )
    straight = compare_workflows(bench, "depth=0.25", out_dir=tmp_path / "straight", **options)
    real_run, calls = runner.run, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(runner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare_workflows(bench, "depth=0.25", out_dir=tmp_path / "cut", **options)
    monkeypatch.setattr(runner, "run", real_run)
    done = [tmp_path / "cut" / "runs" / name / "checkpoint.pt" for name in ("full", "masked")]
    stamps = [path.stat().st_mtime_ns for path in done]
    again = compare_workflows(bench, "depth=0.25", out_dir=tmp_path / "cut", **options)
    assert [path.stat().st_mtime_ns for path in done] == stamps  # reused, not retrained

    def rows(result):
        return [replace(row, seconds=0.0) for row in result.rows]

    assert rows(again) == rows(straight)
