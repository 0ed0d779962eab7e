"""``--dataset NAME --data-root DIR`` through the command line, on fake copies of the real
datasets written in their published layouts (taskbalance.data.real.fake)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from _cli_errors import user_error as _user_error

from taskbalance.cli import _build_parser, main
from taskbalance.cli.train import _train_config_dict
from taskbalance.data.real.fake import write_fake_dataset


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fake-datasets")
    return {
        "nyuv2": write_fake_dataset("nyuv2", base / "nyuv2", train=5, test=2, size=(8, 8)),
        "fingers": write_fake_dataset("fingers", base / "fingers", train=10, test=4, size=(8, 8)),
    }


def test_train_nyuv2_end_to_end(roots, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model_options": {"width": 4, "depth": 2}, "batch_size": 2}))
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--dataset", "nyuv2", "--data-root"]
    argv += [str(roots["nyuv2"]), "--steps", "1", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "test segmentation: miou" in printed and "test normals: mean_angle" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"] == "nyuv2"
    assert results["config"]["data_root"] == str(roots["nyuv2"])
    assert set(results["test"]) == {"segmentation", "depth", "normals"}
    assert 0 <= results["test"]["segmentation"]["miou"] <= 1
    assert results["test"]["depth"]["abs_err"] > 0  # fake depth is 0.5..10, the net outputs ~0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == "nyuv2" and saved["benchmark"] == "multidigits"


def test_compare_on_a_dataset(roots, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--dataset", "fingers", "--data-root", str(roots["fingers"])]
    argv += ["--methods", "ew,mgda", "--seeds", "1", "--epochs", "1", "--steps", "1"]
    argv += ["--batch-size", "4", "--no-timing", "--jobs", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "fingers: 2 methods, 1 seed(s)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == "fingers"
    rows = {row["method"]: row for row in results["leaderboard"]["rows"]}
    assert set(rows) == {"ew", "mgda"}
    for summary in results["runs"]:  # one seed: the leaderboard mean is the run's number
        got = rows[summary["method"]]["metrics"]["hand"]["accuracy"]["mean"]
        assert got == pytest.approx(summary["test"]["hand"]["accuracy"])
    for task in ("count", "hand"):
        cfg = json.loads((out / "baselines" / task / "seed0" / "results.json").read_text())
        assert cfg["config"]["tasks"] == [task] and cfg["config"]["dataset"] == "fingers"
    baseline = results["leaderboard"]["baseline"]["metrics"]["hand"]["accuracy"]
    assert baseline == pytest.approx(results["baselines"][1]["test"]["hand"]["accuracy"])


def test_dataset_user_errors(roots, tmp_path, capsys):
    out = ["--out", str(tmp_path / "x")]
    _user_error(capsys, ["train", "--dataset", "nyuv2", *out], "data_root", "--data-root")
    _user_error(capsys, ["train", "--dataset", "nyu2", "--data-root", "d", *out], "'nyuv2'")
    both = ["train", "--benchmark", "scenes", "--dataset", "nyuv2", "--data-root", "d", *out]
    _user_error(capsys, both, "--benchmark applies", "dataset 'nyuv2'", "drop --benchmark")
    tiny = ["train", "--dataset", "nyuv2", "--data-root", "d", "--size", "tiny", *out]
    _user_error(capsys, tiny, "--size", "built-in benchmarks", "drop --size")
    missing = ["train", "--dataset", "nyuv2", "--data-root", str(tmp_path / "none"), *out]
    _user_error(capsys, missing, "does not exist", "normal/<i>.npy", "docs/datasets.md#nyuv2")
    broken = tmp_path / "broken"
    write_fake_dataset("nyuv2", broken, train=3, test=1, size=(8, 8))
    (broken / "train" / "label" / "0.npy").write_bytes(b"not numpy")
    bad = ["train", "--dataset", "nyuv2", "--data-root", str(broken), *out]
    _user_error(capsys, bad, "cannot read", "label", "Expected layout", "float H x W")
    opt = ["train", "--dataset", "cityscapes", "--data-root", "d"]
    opt += ["--dataset-option", "num_classes=5"]
    _user_error(capsys, [*opt, *out], "num_classes", "7 or 19")
    _user_error(capsys, ["compare", "--data-root", "d", *out], "--data-root", "--dataset")
    _user_error(capsys, ["tune", "--dataset", "nyuv2", "--benchmark", "scenes", *out], "both")
    _user_error(capsys, ["diagnose", *out], "--benchmark", "--dataset")


def test_tune_command_for_a_dataset_parses_back():
    from taskbalance.experiments.tune import TuneSettings, train_command

    settings = TuneSettings(
        dataset="cityscapes", data_root="/data/city scapes", dataset_options={"num_classes": 19}
    )
    command = train_command(settings, [0.5, 1.5])
    args = _build_parser().parse_args(shlex.split(command)[1:])
    data = _train_config_dict(args)
    assert data["dataset"] == "cityscapes" and data["data_root"] == "/data/city scapes"
    assert data["dataset_options"] == {"num_classes": 19}
    assert data["method_options"] == {"weights": [0.5, 1.5]}
    assert "benchmark" not in data


def test_diagnose_on_a_dataset(roots, tmp_path, capsys):
    out = tmp_path / "diag"
    argv = ["diagnose", "--dataset", "fingers", "--data-root", str(roots["fingers"])]
    assert main([*argv, "--steps", "3", "--batch-size", "4", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "count" in summary and "hand" in summary


def test_tune_on_a_dataset(roots, tmp_path, capsys):
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    argv = ["tune", "--dataset", "fingers", "--data-root", str(roots["fingers"]), "--trials", "1"]
    # validate on the 4 test images (1 held-out image could leave no metric in the Δm)
    argv += ["--dataset-option", "val_fraction=0", "--epochs", "1", "--steps", "1"]
    argv += ["--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "study 'fingers-static-weights'" in printed
    assert f"--dataset fingers --data-root {roots['fingers']}" in printed
    assert "--dataset-option=val_fraction=0" in printed
    best = json.loads((out / "best_weights.json").read_text())
    assert set(best["weights"]) == {"count", "hand"}
    assert best["weights"]["count"] == pytest.approx(1.0)  # the first trial is equal weighting
