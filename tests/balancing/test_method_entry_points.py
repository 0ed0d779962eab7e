"""The methods' public entry points: validated ``combine(L, present)``, and the unchecked
``combine_present`` / ``aggregate_present`` the Balancer calls (same numbers as the hooks)."""

from __future__ import annotations

import pytest
import torch

import taskbalance as tb
from taskbalance.balancing.base import check_present


def test_combine_with_present_sums_the_present_weighted_losses() -> None:
    m = tb.create("ew", 3)
    assert isinstance(m, tb.LossMethod)
    L = torch.tensor([1.0, 5.0, 2.0])
    assert float(m.combine(L)) == pytest.approx(8.0)  # equal weights 1
    assert float(m.combine(L, torch.tensor([True, False, True]))) == pytest.approx(3.0)
    assert float(m.combine(L, torch.tensor([1, 0, 1]))) == pytest.approx(3.0)
    assert float(m.combine_present(L, torch.tensor([False, True, False]))) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("present", "match"),
    [
        (torch.tensor([True, False]), r"shape \[3\]"),
        ([True, False, True], r"bool tensor of shape \[3\].*got list"),
        (torch.tensor([0, 2, 1]), "bools"),
        (torch.tensor([0.0, 1.0, 1.0]), "bools"),
        (torch.tensor([False, False, False]), "at least one task"),
    ],
)
def test_a_bad_present_mask_is_one_clear_error(present, match: str) -> None:
    m = tb.create("ew", 3)
    assert isinstance(m, tb.LossMethod)
    with pytest.raises(ValueError, match=match):
        m.combine(torch.ones(3), present)
    with pytest.raises(ValueError, match=match):
        check_present(present, 3)


@pytest.mark.parametrize("name", ["upgrad", "graddrop"])
def test_aggregate_present_with_every_task_matches_aggregate(name: str) -> None:
    J = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]])
    a = tb.create(name, 2, **({"seed": 0} if name == "graddrop" else {}))
    b = tb.create(name, 2, **({"seed": 0} if name == "graddrop" else {}))
    assert isinstance(a, tb.GradientMethod) and isinstance(b, tb.GradientMethod)
    assert torch.equal(a.aggregate(J), b.aggregate_present(J, None, None))


def test_aggregate_present_of_one_task_is_its_gradient_for_upgrad() -> None:
    # with a single task present the dual-cone projection of g onto itself is g
    g = torch.tensor([[3.0, -1.0, 0.5]])
    m = tb.create("upgrad", 3)
    assert isinstance(m, tb.GradientMethod)
    d = m.aggregate_present(g, None, torch.tensor([False, True, False]))
    assert torch.allclose(d, g[0])
