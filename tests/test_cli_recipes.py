"""Recipes from the command line: listing, one training step per recipe on fake data in the
published layouts, explicit flags over recipe values, published rows on the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskbalance import cli
from taskbalance.cli import compare
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
    assert "normals mean_angle 25.26, normals median_angle 20.08, normals within_11.25 0.284" in (
        verbose
    )


# fake data each recipe reads, and the options a CPU smoke run needs on it: MTAN's SegNet halves
# the image 5 times (32 x 32), at width 4 instead of 64 (a 44M-parameter checkpoint per test
# otherwise); CelebA at 16 x 16; MultiMNIST with 3 validation images
_FAKE = {
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
    argv += ["--out", str(out), "--device", "cpu", "--lr", "0.01"]
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
    s = _compare_settings(argv)
    assert (s.epochs, s.steps, list(s.seeds), s.batch_size) == (3, 2, [0], 4)
    assert s.dataset_options == {"val_fraction": 0, "augment": False}


def test_a_recipe_refuses_another_dataset() -> None:
    argv = ["compare", "--recipe", "nyuv2-mtan", "--dataset", "fingers", "--data-root", "/d"]
    with pytest.raises(ValueError, match="trains on dataset 'nyuv2'"):
        _compare_settings(argv)


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
