"""``--experiment FILE`` (docs/experiments.md) through the command line: the worked example of
``examples/own_experiment`` compared end to end, a run resumed, the errors of a bad call."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from _cli_errors import user_error as _user_error

from taskbalance.cli import main
from taskbalance.experiments.tune import TuneSettings, train_command
from taskbalance.training import TrainConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_experiment" / "experiment.yaml"
TINY = ["--epochs", "1", "--steps", "3", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the example's python_path is added




def _relative_change(value, base, higher_is_better):
    sign = -1.0 if higher_is_better else 1.0
    return sign * (value - base) / base * 100.0


def test_compare_runs_every_method_and_the_baselines_on_the_example(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--experiment", str(EXAMPLE), "--methods", "ew,mgda", "--seeds", "1",
            "--jobs", "1", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "customers: 2 methods, 1 seed(s)" in printed
    assert (out / "leaderboard.md").read_text() in printed
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["ew", "mgda"] and results["benchmark"] == "customers"
    assert results["settings"]["experiment"] == str(EXAMPLE)
    board = results["leaderboard"]
    assert board["higher_is_better"] == {
        "spend": {"mae": False, "rmse": False},
        "churn": {"accuracy": True},
    }
    # every number of the leaderboard comes from the runs' own results.json files
    base = {}
    for task in ("spend", "churn"):
        run = json.loads((out / "baselines" / task / "seed0" / "results.json").read_text())
        assert run["config"]["tasks"] == [task] and run["config"]["experiment"] == str(EXAMPLE)
        base[task] = run["test"][task]
    assert board["baseline"]["metrics"] == base
    for row in board["rows"]:
        run = json.loads((out / "runs" / row["method"] / "seed0" / "results.json").read_text())
        test = run["test"]
        assert {
            t: {m: v["mean"] for m, v in ms.items()} for t, ms in row["metrics"].items()
        } == test
        changes = [
            _relative_change(test["spend"]["mae"], base["spend"]["mae"], False),
            _relative_change(test["spend"]["rmse"], base["spend"]["rmse"], False),
            _relative_change(test["churn"]["accuracy"], base["churn"]["accuracy"], True),
        ]
        assert row["delta_m"]["mean"] == pytest.approx(sum(changes) / 3, rel=1e-9)
    # the same command again reuses every finished run and gives the same leaderboard
    assert main(argv) == 0
    assert printed.count("trained in") == 4 and capsys.readouterr().out.count("reused") == 4
    again = json.loads((out / "results.json").read_text())["leaderboard"]
    assert [r["delta_m"] for r in again["rows"]] == [r["delta_m"] for r in board["rows"]]


def test_train_records_the_experiment_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(EXAMPLE.parent)  # a relative path is recorded as an absolute one
    out = tmp_path / "run"
    argv = ["train", "--experiment", EXAMPLE.name, "--method", "uw", "--out", str(out), *TINY]
    assert main(argv) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["experiment"] == str(EXAMPLE)
    argv[argv.index("--epochs") + 1] = "2"
    assert main([*argv, "--resume"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["epoch"] for r in results["history"]] == [1, 2]
    assert set(results["test"]) == {"spend", "churn"}
    capsys.readouterr()


def test_groups_train_on_the_experiment_and_a_rerun_reuses_them(tmp_path, capsys):
    out = tmp_path / "groups"
    argv = ["train", "--experiment", str(EXAMPLE), "--groups", "spend;churn", "--shared",
            "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "groups.json").read_text())
    for task in ("spend", "churn"):
        run = json.loads((out / task / "results.json").read_text())
        assert run["config"]["tasks"] == [task] and run["config"]["experiment"] == str(EXAMPLE)
        assert report["test"][task] == run["test"][task]
    shared = json.loads((out / "shared" / "results.json").read_text())
    assert report["shared_parameters"] == shared["num_parameters"]
    capsys.readouterr()
    assert main(argv) == 0  # every run reused, none trained again
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines if "reused" in line] == [
        "spend: reused", "churn: reused", "shared: reused"
    ]
    assert json.loads((out / "groups.json").read_text())["test"] == report["test"]


def test_default_run_folder_is_named_after_the_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from taskbalance.cli import _build_parser
    from taskbalance.cli.train import _train_config_dict

    args = _build_parser().parse_args(["train", "--experiment", str(EXAMPLE), "--seed", "3"])
    assert _train_config_dict(args)["out_dir"] == str(Path("runs") / "customers-ew-seed3")


def test_bad_calls_are_one_line_errors(tmp_path, capsys):
    ex = ["--experiment", str(EXAMPLE)]
    _user_error(capsys, ["compare", *ex, "--labels", "churn=0.5", "--out", str(tmp_path / "a")],
                "remove --experiment or --labels")  # fmt: skip
    _user_error(capsys, ["compare", *ex, "--dataset", "nyuv2", "--out", str(tmp_path / "b")],
                "give --dataset or --experiment, not both")  # fmt: skip
    _user_error(capsys, ["compare", *ex, "--size", "tiny", "--out", str(tmp_path / "c")],
                "--size applies", "drop --size (its data_options size it)")  # fmt: skip
    _user_error(capsys, ["tune", *ex, "--benchmark", "scenes", "--out", str(tmp_path / "d")],
                "both --benchmark and --experiment given")  # fmt: skip
    _user_error(capsys, ["train", *ex, "--benchmark", "scenes", "--out", str(tmp_path / "e")],
                "--benchmark applies", "--experiment file's data", "drop --benchmark")  # fmt: skip
    _user_error(capsys, ["train", "--experiment", str(tmp_path / "none.yaml")], "does not exist")
    broken = tmp_path / "broken.yaml"
    text = EXAMPLE.read_text().replace("model: customers:build", "model: customers:bild")
    broken.write_text(text.replace("python_path: .", f"python_path: {EXAMPLE.parent}"))
    _user_error(capsys, ["train", "--experiment", str(broken), "--out", str(tmp_path / "f")],
                "key 'model'", "no attribute 'bild'", "did you mean 'build'")  # fmt: skip
    assert not (tmp_path / "f" / "results.json").exists()


def test_config_checks_the_experiment_key(tmp_path):
    config = TrainConfig(experiment=str(EXAMPLE), tasks=["churn"])
    assert config.data_name == "customers" and config.experiment == str(EXAMPLE)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['price'\] of experiment"):
        TrainConfig(experiment=str(EXAMPLE), tasks=["price"])
    with pytest.raises(ValueError, match="'labels'.*masks"):
        TrainConfig(experiment=str(EXAMPLE), labels={"churn": 0.5})
    with pytest.raises(FileNotFoundError):
        TrainConfig(experiment=str(tmp_path / "none.yaml"))


def test_tune_prints_a_train_command_with_the_experiment():
    command = train_command(TuneSettings(experiment=str(EXAMPLE)), [0.5, 1.5])
    assert f"--experiment {EXAMPLE}" in command and "--benchmark" not in command


def test_diagnose_on_the_example(tmp_path, capsys):
    out = tmp_path / "diag"
    argv = ["diagnose", "--experiment", str(EXAMPLE), "--steps", "4", "--out", str(out)]
    assert main([*argv, "--threads", "1"]) == 0
    report = json.loads((out / "diagnostics.json").read_text())
    assert "customers" in capsys.readouterr().out + (out / "summary.md").read_text()
    assert report["tasks"] == ["spend", "churn"]


def test_a_run_of_an_edited_experiment_file_is_not_reused(tmp_path):
    # the config names the file by its path only: a finished run of the file's earlier content
    # (another width here) must be refused, not reported as a run of the new content
    import shutil

    from taskbalance.training import run

    folder = tmp_path / "mine"
    shutil.copytree(EXAMPLE.parent, folder)
    path = folder / "experiment.yaml"
    config = TrainConfig(experiment=str(path), epochs=1, steps=3, out_dir=str(tmp_path / "r"),
                         progress=False, tensorboard=False)  # fmt: skip
    run(config)
    path.write_text(path.read_text().replace("width: 64", "width: 8"))
    with pytest.raises(ValueError, match="other settings.*inputs:.*'width': 64.*'width': 8"):
        run(config)
