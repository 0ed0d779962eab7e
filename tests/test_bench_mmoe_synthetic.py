"""``benchmarks/mmoe_synthetic.py``'s statistics: seed lists and the seeds a paired t-test needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mmoe_synthetic.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mmoe_synthetic", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("d_z", "seeds"), [(0.5, 34), (1.0, 10), (-1.0, 10), (0.8, 15)])
def test_seeds_for_80_percent_power_match_published_sizes(d_z: float, seeds: int) -> None:
    """Two-sided paired t-test at 0.05, power 0.8: the sample sizes of G*Power's exact
    (noncentral t) calculation, the textbook values 34 for d = 0.5, 15 for 0.8 and 10 for 1."""
    assert _script().seeds_for_power(d_z) == seeds


def test_seeds_for_power_of_no_effect_is_none() -> None:
    assert _script().seeds_for_power(0.0) is None


def test_seed_arguments() -> None:
    parse = _script().parse_seeds
    assert parse("3") == [0, 1, 2]
    assert parse("10-12") == [10, 11, 12]
    assert parse("1000,1001,1002") == [1000, 1001, 1002]
    for bad in ("0", "5-3", "1,1", "a", "1,", "-2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse(bad)
