"""Recipes from the command line: listing, one training step per recipe on fake data in the
published layouts, explicit flags over recipe values, published rows on the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _cli_errors import user_error

from taskbalance import cli
from taskbalance.cli import compare, tune
from taskbalance.data.real.fake import write_fake_dataset
from taskbalance.training.recipes import RECIPES, get_recipe

pytest.importorskip("yaml")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKBALANCE_CACHE", str(tmp_path / "cache"))


def test_recipes_lists_name_dataset_model_protocol_source(capsys) -> None:
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        block = out.split(f"{name}  (dataset {recipe.dataset})", 1)[1]
        assert f"model:     {recipe.model}" in block
        assert f"protocol:  {recipe.summary()}" in block
        assert f"source:    {recipe.source}" in block
    assert "published: 11 rows (LS, UW, RLW, DWA, MGDA, PCGrad, GradDrop" in out
    assert "note:" not in out
    assert cli.main(["recipes", "--verbose"]) == 0
    verbose = capsys.readouterr().out
    assert "note:      taskbalance computes depth" in verbose
    # the printed percent 40.13 / 65.93 / 28.40 as fractions, the angles in degrees
    assert "Nash-MTL: segmentation miou 0.4013, segmentation pixel_acc 0.6593" in verbose
    assert "depth abs_err 0.5261, depth rel_err 0.2171, normals" in verbose  # 4 decimals
    assert "within_30 0.6815, Δm% -4.04 (Navon et al., ICML 2022, Table 2)" in verbose
    assert "STL: segmentation miou 0.383, segmentation pixel_acc 0.6376" in verbose
    assert "no published numbers are stored" in verbose  # celeba-resnet18, multimnist-lenet
    assert "normals mean_angle 25.26, normals median_angle 20.08, normals within_11.25 0.284" in (
        verbose
    )


# fake data each recipe reads, and the options a CPU smoke run needs on it: MTAN's SegNet halves
# the image 5 times (32 x 32), at width 4 instead of 64 (a 44M-parameter checkpoint per test
# otherwise); CelebA at 16 x 16; MultiMNIST with 3 validation images
_FAKE: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "nyuv2-mtan": ("nyuv2", {"size": (32, 32)}, {"model_options": {"width": 4}}),
    "cityscapes-mtan": ("cityscapes", {"size": (32, 32)}, {"model_options": {"width": 4}}),
    "celeba-resnet18": ("celeba", {}, {"dataset_options": {"image_size": 16}}),
    "multimnist-lenet": (
        "multimnist",
        {"train": 8, "test": 3},
        {"dataset_options": {"val_size": 3}},
    ),
}


@pytest.mark.parametrize("name", sorted(_FAKE))
def test_each_recipe_trains_one_step_on_fake_data(name: str, tmp_path: Path) -> None:
    import yaml

    dataset, fake, smoke = _FAKE[name]
    root = write_fake_dataset(dataset, tmp_path / dataset, **fake)
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    out = tmp_path / "run"
    argv = ["train", "--recipe", name, "--data-root", str(root), "--steps", "1", "--epochs", "1"]
    argv += ["--out", str(out), "--lr", "0.01"]  # no --device: the recipe's auto (CPU here)
    assert cli.main([*argv, "--config", str(tmp_path / "smoke.yaml")]) == 0
    results = json.loads((out / "results.json").read_text())
    config, recipe = results["config"], get_recipe(name).config
    assert config["dataset"] == recipe["dataset"]
    # the recipe's protocol, except what was given explicitly; option dicts merged key by key
    for key in ("optimizer", "scheduler", "scheduler_options", "batch_size"):
        assert config[key] == recipe[key]
    for key in ("model_options", "dataset_options"):
        assert config[key] == {**recipe[key], **smoke.get(key, {})}
    assert (config["lr"], config["epochs"], config["steps"]) == (0.01, 1, 1)
    assert config["final_epochs"] == recipe.get("final_epochs")
    assert config["device"] == "auto"  # CUDA, then MPS, then the CPU
    assert results["epochs_completed"] == 1 and set(results["test"]) == set(results["tasks"])


def _compare_settings(argv: list[str]):
    args = cli._build_parser().parse_args(argv)
    args.argv = argv
    return compare._compare_settings(args, Path("out"))


def test_compare_flags_given_override_the_recipe_and_defaults_do_not() -> None:
    s = _compare_settings(["compare", "--recipe", "nyuv2-mtan", "--data-root", "/d"])
    assert (s.dataset, s.data_root, s.epochs, s.steps, s.batch_size) == (
        "nyuv2",
        "/d",
        200,
        None,
        2,
    )
    assert (s.lr, s.scheduler, list(s.seeds), s.recipe) == (1e-4, "step", [0, 1, 2], "nyuv2-mtan")
    assert s.extra["final_epochs"] == 10 and s.extra["model_options"] == {"architecture": "mtan"}
    assert s.device == "auto"  # no --device: CUDA, then MPS, then the CPU
    argv = ["compare", "--recipe", "nyuv2-mtan", "--data-root", "/d", "--epochs", "3"]
    argv += [
        "--steps",
        "2",
        "--seeds",
        "1",
        "--batch-size",
        "4",
        "--dataset-option",
        "augment=false",
    ]
    argv += ["--lr", "0.01", "--scheduler", "cosine", "--device", "cpu"]
    s = _compare_settings(argv)
    assert (s.epochs, s.steps, list(s.seeds), s.batch_size) == (3, 2, [0], 4)
    assert (s.lr, s.scheduler, s.device) == (0.01, "cosine", "cpu")
    assert s.dataset_options == {"val_fraction": 0, "augment": False}


def test_a_recipe_refuses_another_dataset() -> None:
    argv = ["compare", "--recipe", "nyuv2-mtan", "--dataset", "fingers", "--data-root", "/d"]
    with pytest.raises(ValueError, match="trains on dataset 'nyuv2'"):
        _compare_settings(argv)


_MNIST = ["--recipe", "multimnist-lenet", "--data-root", "/nonexistent"]


@pytest.mark.parametrize(
    ("argv", "flag", "other"),
    [
        (["compare", *_MNIST, "--benchmark", "multidigits"], "--benchmark", "--recipe multimnist"),
        (["compare", *_MNIST, "--size", "default"], "--size", "--recipe multimnist-lenet"),
        (["train", *_MNIST, "--benchmark", "multidigits"], "--benchmark", "dataset 'multimnist'"),
        (["train", *_MNIST, "--size", "default"], "--size", "--recipe multimnist-lenet"),
        (["tune", *_MNIST, "--size", "default"], "--size", "--recipe multimnist-lenet"),
        (["compare", "--dataset", "multimnist", "--data-root", "/nonexistent", "--benchmark",
          "multidigits"], "--benchmark", "trains on dataset 'multimnist'"),
        (["train", "--dataset", "multimnist", "--data-root", "/nonexistent", "--size",
          "default"], "--size", "trains on dataset 'multimnist'"),
        (["train", "--experiment", "/nonexistent.yaml", "--benchmark", "multidigits"],
         "--benchmark", "the --experiment file's data"),
        (["diagnose", "--dataset", "nyuv2", "--data-root", "/nonexistent", "--size",
          "default"], "--size", "trains on dataset 'nyuv2'"),
    ],
)  # fmt: skip
def test_benchmark_flags_beside_other_data_are_refused_not_ignored(
    argv: list[str], flag: str, other: str, tmp_path: Path, capsys
) -> None:
    # --benchmark multidigits and --size default equal the defaults: they used to be dropped
    # without a word (the run trained on the recipe's or dataset's data)
    line = user_error(capsys, [*argv, "--out", str(tmp_path / "o")], flag, other, f"drop {flag}")
    assert "applies to the built-in benchmarks" in line
    assert not (tmp_path / "o").exists()


def test_compare_labels_refuses_a_recipe(tmp_path: Path, capsys) -> None:
    # the workflows train on a built-in benchmark: the recipe used to be ignored (a workflow
    # comparison on multidigits ran)
    argv = ["compare", "--recipe", "multimnist-lenet", "--labels", "left=0.5", "--size", "tiny"]
    argv += ["--epochs", "1", "--steps", "1", "--out", str(tmp_path / "o")]
    user_error(capsys, argv, "--labels workflows run on the built-in benchmarks", "--recipe")


def test_compare_with_a_recipe_prints_the_published_rows(tmp_path: Path) -> None:
    from taskbalance.experiments.compare import CompareSettings, run_compare

    root = write_fake_dataset("cityscapes", tmp_path / "cs", train=3, test=2)
    settings = CompareSettings(
        dataset="cityscapes",
        data_root=str(root),
        methods=["nash_mtl"],
        seeds=[0],
        epochs=1,
        steps=1,
        out_dir=str(tmp_path / "cmp"),
        timing=False,
        extra={"model_options": {"width": 4, "depth": 2}, "batch_size": 2, "final_epochs": 10},
        recipe="cityscapes-mtan",
    )
    result = run_compare(settings, log=lambda _: None)
    text = (tmp_path / "cmp" / "leaderboard.md").read_text()
    assert text == result.markdown and "## Published numbers (recipe cityscapes-mtan)" in text
    assert "Metrics on the test split as each metric's mean over the last 10 epochs;" in text
    mine = result.leaderboard["rows"][0]["metrics"]["segmentation"]["miou"]["mean"]
    assert f"| ours (1 seed(s)) | nash_mtl | {mine:.4f} ± 0.0000 |" in text
    ours = [line for line in text.splitlines() if line.startswith("| ours (1 seed(s)) |")]
    assert ours and "–" not in ours[0]  # every published (task, metric) is one of ours
    assert (
        json.loads((tmp_path / "cmp" / "results.json").read_text())["recipe"] == "cityscapes-mtan"
    )


def _tune_settings(argv: list[str]):
    args = cli._build_parser().parse_args(argv)
    args.argv = argv
    return tune._recipe_settings(args, _plain_tune_settings(args))


def _plain_tune_settings(args):
    from taskbalance.cli._common import data_settings
    from taskbalance.experiments.tune import TuneSettings

    fields = {k: getattr(args, k) for k in ("epochs", "steps", "device", "lr", "batch_size")}
    return TuneSettings(benchmark="multidigits", **data_settings(args), **fields)


def test_tune_follows_the_recipe_under_the_flags_given(capsys) -> None:
    from taskbalance.experiments.tune import train_command

    s = _tune_settings(["tune", "--recipe", "nyuv2-mtan", "--data-root", "/d"])
    assert (s.dataset, s.data_root, s.epochs, s.steps, s.batch_size, s.lr, s.device) == (
        "nyuv2", "/d", 200, None, 2, 1e-4, "auto"
    )  # fmt: skip
    assert s.extra["model_options"] == {"architecture": "mtan"} and s.extra["final_epochs"] == 10
    assert (s.extra["scheduler"], s.extra["scheduler_options"]) == ("step", RECIPES[
        "nyuv2-mtan"].config["scheduler_options"])  # fmt: skip
    # the weights are tuned on a held-out part of the training folder, not on the test split
    assert s.dataset_options == {"val_fraction": 0.1, "augment": True}
    assert "not on the test split" in capsys.readouterr().out
    command = train_command(s, [1.0, 1.0, 1.0])
    assert command.startswith("taskbalance train --recipe nyuv2-mtan --data-root /d ")
    # the final run follows the recipe: trains on the whole training folder (val_fraction 0)
    assert "--dataset-option" not in command and "--dataset " not in command
    argv = ["tune", "--recipe", "nyuv2-mtan", "--data-root", "/d", "--epochs", "3", "--steps"]
    argv += ["2", "--batch-size", "4", "--device", "cpu", "--dataset-option", "val_fraction=0"]
    s = _tune_settings(argv)
    assert (s.epochs, s.steps, s.batch_size, s.device) == (3, 2, 4, "cpu")
    assert s.dataset_options["val_fraction"] == 0  # given: the recipe's test-split validation
    assert "--dataset-option=val_fraction=0 " in train_command(s, [1.0, 1.0, 1.0]) + " "


def test_tune_command_takes_a_recipe(tmp_path: Path, monkeypatch, capsys) -> None:
    import taskbalance.experiments.tune as tuning

    seen = []

    def fake_run_tune(settings, log):
        seen.append(settings)
        return tuning.TuneResult("s", "sqlite://", 1, 0.0, {"a": 1.0, "b": 1.0}, "cmd")

    monkeypatch.setattr(tuning, "run_tune", fake_run_tune)
    argv = ["tune", "--recipe", "cityscapes-mtan", "--data-root", "/d", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert seen[0].recipe == "cityscapes-mtan" and seen[0].dataset == "cityscapes"
    assert seen[0].extra["final_epochs"] == 10
    for extra in (["--benchmark", "multidigits"], ["--experiment", "x.yaml"]):
        user_error(capsys, [*argv, *extra], "--recipe sets a published dataset", f"drop {extra[0]}")


def test_tune_with_a_recipe_runs_a_trial_on_fake_data(tmp_path: Path, capsys) -> None:
    import yaml

    root = write_fake_dataset("cityscapes", tmp_path / "cs", train=4, test=2, size=(32, 32))
    argv = ["tune", "--recipe", "cityscapes-mtan", "--data-root", str(root), "--trials", "1"]
    argv += ["--steps", "1", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "t")]
    argv += ["--dataset-option", "val_fraction=0.5", "--batch-size", "2"]
    args = cli._build_parser().parse_args(argv)
    args.argv = argv
    settings = tune._recipe_settings(args, _plain_tune_settings(args))
    settings.extra["model_options"] = {**settings.extra["model_options"], "width": 4}  # CPU-sized
    from dataclasses import replace

    from taskbalance.experiments.tune import run_tune

    result = run_tune(replace(settings, out_dir=str(tmp_path / "t"), trials=1), log=lambda _: None)
    assert result.trials == 1 and set(result.best_weights) == {"segmentation", "depth"}
    assert result.command.startswith("taskbalance train --recipe cityscapes-mtan --data-root ")
    trial = next((tmp_path / "t" / "trials").iterdir())
    config = yaml.safe_load(next(trial.rglob("config.yaml")).read_text())
    recipe = RECIPES["cityscapes-mtan"].config
    for key in ("optimizer", "scheduler", "scheduler_options", "final_epochs", "weight_decay"):
        assert config[key] == recipe[key], key
    assert config["model_options"] == {"architecture": "mtan", "width": 4}
    assert config["dataset_options"] == {"val_fraction": 0.5, "augment": True, "num_classes": 7}
