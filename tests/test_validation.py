"""The shared input checks of taskbalance.validation."""

from __future__ import annotations

import math

import pytest
import torch

from taskbalance.validation import (
    check_finite_losses,
    check_int,
    check_positive,
    is_int,
    is_number,
    is_real,
)


@pytest.mark.parametrize(
    ("value", "integer", "number", "real"),
    [
        (3, True, True, True),
        (0, True, True, True),
        (True, False, False, False),  # bool is an int subclass: refused everywhere
        (False, False, False, False),
        (2.5, False, True, True),
        (math.nan, False, True, False),
        (math.inf, False, True, False),
        ("3", False, False, False),
        (None, False, False, False),
    ],
)
def test_number_predicates_refuse_bools(value, integer, number, real) -> None:
    assert (is_int(value), is_number(value), is_real(value)) == (integer, number, real)


def test_check_int_and_positive_name_the_option_and_the_bound() -> None:
    assert check_int("epochs", 2, minimum=1) == 2
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got True"):
        check_int("epochs", True, minimum=1)
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        check_int("epochs", 0, minimum=1)
    assert check_positive("lr", 0.5) == 0.5
    assert check_positive("eps", 0, allow_zero=True) == 0.0
    for bad in (0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            check_positive("lr", bad)


def test_finite_loss_check_names_the_first_bad_task() -> None:
    check_finite_losses(torch.tensor([1.0, 2.0]), ["a", "b"])
    with pytest.raises(ValueError, match=r"the loss of task 'b' is nan"):
        check_finite_losses(torch.tensor([1.0, math.nan, math.inf]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"the loss of task 1 is inf"):
        check_finite_losses(torch.tensor([1.0, math.inf]))


def test_registered_names_the_closest_and_every_valid_name() -> None:
    from taskbalance.validation import did_you_mean, registered

    registry = {"nyuv2": 1, "cityscapes": 2}
    assert registered(registry, "nyuv2", "dataset") == 1
    assert did_you_mean("nyu_v2", registry) == " (did you mean 'nyuv2'?)"
    assert did_you_mean("zzz", registry) == ""
    with pytest.raises(ValueError) as err:
        registered(registry, "citiscapes", "dataset", " (see docs)")
    assert str(err.value) == (
        "unknown dataset 'citiscapes' (did you mean 'cityscapes'?); "
        "available datasets: cityscapes, nyuv2 (see docs)"
    )


def test_benchmarks_datasets_and_recipes_share_the_unknown_name_error() -> None:
    from taskbalance.data.benchmark import get_spec
    from taskbalance.data.registry import get_dataset_spec
    from taskbalance.training.recipes import get_recipe

    close = r"unknown benchmark 'multidigit' \(did you mean 'multidigits'\?\)"
    with pytest.raises(ValueError, match=close):
        get_spec("multidigit")
    with pytest.raises(ValueError, match=r"unknown dataset 'celeb' \(did you mean 'celeba'\?\)"):
        get_dataset_spec("celeb")
    with pytest.raises(ValueError, match=r"unknown recipe 'nyuv2' .*taskbalance recipes"):
        get_recipe("nyuv2")
