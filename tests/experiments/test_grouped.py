"""``train --groups``: one network per group, combined metrics, compute and Δm% checked against
the per-group results files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from taskbalance.cli import main
from taskbalance.experiments.grouped import check_groups, parse_groups

TINY = ["--benchmark", "synthetic-groups", "--size", "tiny", "--epochs", "1", "--steps", "2"]


def test_parse_groups_and_refusals() -> None:
    assert parse_groups(" a1 , a2 ;b1") == [["a1", "a2"], ["b1"]]
    with pytest.raises(ValueError, match="empty group or task name"):
        parse_groups("a1,;b1")
    with pytest.raises(ValueError, match=r"unknown task 'c'.*\['a', 'b'\]"):
        check_groups([["a"], ["c"]], ["a", "b"])
    with pytest.raises(ValueError, match="'a' is in groups 1 and 2"):
        check_groups([["a", "b"], ["a"]], ["a", "b"])


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_groups_report_matches_the_group_runs(tmp_path: Path) -> None:
    base, out = tmp_path / "single", tmp_path / "grouped"
    assert main(["train", *TINY, "--groups", "a1;a2;b1", "--out", str(base), "--threads", "1"]) == 0
    argv = ["train", *TINY, "--groups", "a1,a2;b1", "--shared", "--baselines", str(base)]
    assert main([*argv, "--out", str(out), "--threads", "1"]) == 0
    report = json.loads((out / "groups.json").read_text())
    runs = {"a1+a2": _results(out / "a1+a2"), "b1": _results(out / "b1")}
    shared = _results(out / "shared")
    assert runs["a1+a2"]["trainable_tasks"] == ["a1", "a2"]  # hard sharing inside the group
    assert shared["trainable_tasks"] == ["a1", "a2", "b1"]
    # each task's metrics come from its own group's run
    assert report["test"] == {
        "a1": runs["a1+a2"]["test"]["a1"], "a2": runs["a1+a2"]["test"]["a2"],
        "b1": runs["b1"]["test"]["b1"],
    }  # fmt: skip
    # compute: the sum over the group networks, against the shared network's own count
    assert report["num_parameters"] == sum(r["num_parameters"] for r in runs.values())
    assert report["seconds_per_step"] == pytest.approx(
        sum(r["seconds_per_step"] for r in runs.values())
    )
    assert report["shared_parameters"] == shared["num_parameters"]
    # Δm%: every metric here is an error (lower is better): mean of (M - B) / B × 100
    for key, test in (("delta_m", report["test"]), ("shared_delta_m", shared["test"])):
        changes = []
        for task in ("a1", "a2", "b1"):
            b = _results(base / task)["test"][task]
            changes += [(test[task][m] - b[m]) / b[m] * 100 for m in b]
        assert report[key]["overall"] == pytest.approx(np.mean(changes), rel=1e-9)
    md = (out / "groups.md").read_text(encoding="utf-8")
    assert f"{report['delta_m']['overall']:+.2f}" in md and str(report["num_parameters"]) in md


def test_groups_refuse_a_missing_baseline_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g"
    argv = ["train", *TINY, "--groups", "a1;b1", "--baselines", str(tmp_path / "none")]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no single-task baseline of 'a1'" in err and "results.json" in err
    assert not out.exists()


def test_baselines_without_groups_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "--shared"]) == 2
    assert "--baselines and --shared go with --groups" in capsys.readouterr().err


def test_baselines_of_another_seed_or_not_single_task_are_refused(tmp_path: Path) -> None:
    # DIR/<task>/results.json carries no seed in its path: a run of another seed (or of more
    # than one task) would give Δm% against the wrong baseline without a word
    from taskbalance.experiments.grouped import load_baselines

    def write(task: str, seed: int, tasks: list[str]) -> None:
        (tmp_path / task).mkdir(exist_ok=True)
        results = {"config": {"seed": seed, "tasks": tasks}, "test": {task: {"mae": 0.5}}}
        (tmp_path / task / "results.json").write_text(json.dumps(results))

    write("a1", 0, ["a1"])
    assert load_baselines(tmp_path, ["a1"], seed=0) == {"a1": {"mae": 0.5}}
    with pytest.raises(ValueError, match=r"a1.*seed 0.*seed 1"):
        load_baselines(tmp_path, ["a1"], seed=1)
    write("a2", 0, ["a1", "a2"])
    with pytest.raises(ValueError, match=r"a2.*not a single-task run.*\['a1', 'a2'\]"):
        load_baselines(tmp_path, ["a2"], seed=0)


def test_shared_parameters_are_counted_without_loading_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskbalance.data.real.fake import write_fake_dataset
    from taskbalance.experiments.grouped import _shared_parameters
    from taskbalance.training import TrainConfig, sources
    from taskbalance.training.results import count_parameters

    root = write_fake_dataset("nyuv2", tmp_path / "nyu", train=3, test=2, size=(8, 8))
    example = Path(__file__).parents[2] / "examples" / "own_experiment" / "experiment.yaml"
    configs = [
        TrainConfig(benchmark="synthetic-groups", size="tiny"),
        TrainConfig(dataset="nyuv2", data_root=str(root), model_options={"width": 2, "depth": 1}),
        TrainConfig(experiment=str(example)),
    ]
    # the counts of models built from the loaded data, as before
    expected = []
    for config in configs:
        data = sources.load_data(config)
        tasks = data.task_names[:2]
        model = data.build_model(**config.model_options)
        expected.append((tasks, count_parameters(model, tasks)))

    def refuse(config: TrainConfig) -> None:
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(sources, "load_data", refuse)
    for config, (tasks, count) in zip(configs, expected):
        assert _shared_parameters(config, tasks) == count > 0


def test_a_second_call_reuses_the_group_runs_and_refuses_other_settings(tmp_path: Path) -> None:
    from taskbalance.experiments.grouped import train_groups

    out = tmp_path / "g"
    config = {
        "benchmark": "synthetic-groups", "size": "tiny", "epochs": 1, "steps": 2,
        "out_dir": str(out), "progress": False, "tensorboard": False,
    }  # fmt: skip
    groups = [["a1", "a2"], ["b1"]]
    first = train_groups(config, groups, shared=True, log=lambda line: None)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")}
    assert len(stamps) == 3
    lines: list[str] = []
    again = train_groups(config, groups, shared=True, log=lines.append)
    assert [line.split(" (")[0] for line in lines if "reused" in line] == [
        "a1+a2: reused", "b1: reused", "shared: reused"
    ]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoint.pt")} == stamps
    assert (again.test, again.shared_test) == (first.test, first.shared_test)
    assert (again.group_parameters, again.shared_parameters) == (
        first.group_parameters, first.shared_parameters
    )
    with pytest.raises(ValueError, match=r"a1\+a2 holds a finished run .*lr.*--overwrite"):
        train_groups({**config, "lr": 0.5}, groups, log=lambda line: None)
    train_groups({**config, "lr": 0.5}, groups, overwrite=True, log=lambda line: None)
    assert json.loads((out / "b1" / "results.json").read_text())["config"]["lr"] == 0.5
