"""Recipes: one place per published protocol; explicit values override them."""

from __future__ import annotations

import pytest

from taskbalance.training.recipes import RECIPES, available_recipes, get_recipe, recipe_config


def test_the_four_recipes_and_their_protocols() -> None:
    assert available_recipes() == [
        "celeba-resnet18",
        "cityscapes-mtan",
        "multimnist-lenet",
        "nyuv2-mtan",
    ]
    nyu = get_recipe("nyuv2-mtan")
    assert (nyu.config["lr"], nyu.config["batch_size"], nyu.config["epochs"]) == (1e-4, 2, 200)
    assert nyu.config["scheduler_options"] == {"step_size": 100, "gamma": 0.5}
    assert nyu.final == "mean of the last 10 epochs' test metrics"
    assert "x0.5 every 100 epochs" in nyu.summary() and "scale-crop-flip" in nyu.summary()
    assert get_recipe("cityscapes-mtan").config["batch_size"] == 8
    assert get_recipe("celeba-resnet18").final == "test metrics at the best validation epoch"
    for recipe in RECIPES.values():
        assert recipe.source and recipe.code and recipe.config["dataset"] == recipe.dataset
        for row in recipe.published:  # fractions (angles in degrees, errors as printed)
            for metrics in row.metrics.values():
                for name, value in metrics.items():
                    top = 90 if name.endswith("_angle") else 100 if name.endswith("_err") else 1
                    assert 0 <= value <= top, (name, value)


def test_explicit_values_override_and_option_dicts_merge() -> None:
    data = recipe_config(
        "nyuv2-mtan",
        {"lr": 3e-4, "epochs": 1, "dataset_options": {"augment": False}, "data_root": "/d"},
    )
    assert data["lr"] == 3e-4 and data["epochs"] == 1 and data["data_root"] == "/d"
    assert data["dataset_options"] == {"val_fraction": 0, "augment": False}
    assert data["batch_size"] == 2  # untouched
    # the recipe itself is not changed by applying it
    assert RECIPES["nyuv2-mtan"].config["dataset_options"]["augment"] is True


def test_unknown_recipe_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="did you mean 'nyuv2-mtan'.*celeba-resnet18"):
        get_recipe("nyuv2-mtn")
