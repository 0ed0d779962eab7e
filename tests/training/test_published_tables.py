"""The published tables stored with the recipes, checked against themselves.

Each table prints a Δm% per row next to its metrics and a single-task row; recomputing Δm% from
the stored cells (with the library's Δm and its metric directions) must land on the printed
Δm% within what the printed rounding allows. A mistyped cell, a cell under the wrong column, or
a wrong percent-to-fraction conversion moves the recomputed value out of that window (the last
test shows it does for one such typo).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from taskbalance.tasks import depth_task, normal_task, segmentation_task, task_delta
from taskbalance.training.published_tables import (
    CITYSCAPES_MTAN,
    NYUV2_MTAN,
    PublishedRow,
    PublishedTable,
    printed_decimals,
)
from taskbalance.training.recipes import RECIPES

DIRECTIONS = {  # the library's own metric directions for the tasks of these tables
    t.name: t.higher_is_better
    for t in (segmentation_task("segmentation", 13), depth_task("depth"), normal_task("normals"))
}


def _relative_halfwidth(row: PublishedRow, key: str) -> float:
    """Half a unit in the last printed place, relative to the printed value."""
    cell = row.printed[key]
    return 0.5 * 10.0 ** -printed_decimals(cell) / abs(float(cell))


def _recomputed(row: PublishedRow, base: PublishedRow) -> tuple[float, float]:
    """Δm% of ``row`` against ``base`` from the stored values, and how far rounding of the
    printed cells and of the printed Δm% (2 decimals) can move it (first order, plus 1%)."""
    directions = {t: {m: DIRECTIONS[t][m] for m in ms} for t, ms in row.metrics.items()}
    overall = task_delta(row.metrics, base.metrics, directions).overall
    keys = [f"{t}/{m}" for t, ms in row.metrics.items() for m in ms]
    spread = 0.0
    for key in keys:
        task, metric = key.split("/")
        ratio = row.metrics[task][metric] / base.metrics[task][metric]
        spread += ratio * (_relative_halfwidth(row, key) + _relative_halfwidth(base, key))
    return overall, 100 * spread / len(keys) * 1.01 + 0.005


def _rows_with_delta(table: PublishedTable) -> list[PublishedRow]:
    return [row for row in table.rows if row.delta_m is not None]


@pytest.mark.parametrize("table", [NYUV2_MTAN, CITYSCAPES_MTAN], ids=["nyuv2", "cityscapes"])
def test_printed_delta_m_follows_from_the_stored_cells(table: PublishedTable) -> None:
    rows = _rows_with_delta(table)
    assert len(rows) >= 9
    for row in rows:
        overall, tolerance = _recomputed(row, table.baseline)
        assert row.delta_m is not None
        assert abs(overall - row.delta_m) <= tolerance, (row.label, overall, row.delta_m)
        assert tolerance < (0.06 if table is NYUV2_MTAN else 0.4)  # a window that can miss


def test_cells_are_stored_at_the_printed_precision_in_our_units() -> None:
    ls = next(row for row in NYUV2_MTAN.rows if row.label == "LS")
    assert ls.method == "ew"
    assert ls.metrics["depth"] == {"abs_err": 0.5493, "rel_err": 0.2263}  # 4 decimals, as printed
    assert ls.metrics["segmentation"]["miou"] == pytest.approx(0.3929, abs=1e-12)  # 39.29 %
    assert ls.metrics["normals"]["within_22.5"] == pytest.approx(0.475, abs=1e-12)  # 47.50 %
    assert ls.metrics["normals"]["mean_angle"] == 28.15  # degrees
    for row in (NYUV2_MTAN.baseline, *NYUV2_MTAN.rows):
        assert printed_decimals(row.printed["depth/abs_err"]) == 4, row.label
    nash = next(row for row in CITYSCAPES_MTAN.rows if row.label == "Nash-MTL")
    assert nash.metrics == {
        "segmentation": {"miou": 0.7541, "pixel_acc": 0.9366},
        "depth": {"abs_err": 0.0129, "rel_err": 35.02},  # rel err: a plain ratio, as printed
    }


def test_rows_without_a_cell_say_so_and_the_recipes_carry_the_tables() -> None:
    moco = next(row for row in CITYSCAPES_MTAN.rows if row.label == "MoCo")
    assert "rel_err" not in moco.metrics["depth"] and moco.delta_m is None
    assert "not found" in moco.checked
    graddrop = next(row for row in CITYSCAPES_MTAN.rows if row.label == "GradDrop")
    assert graddrop.delta_m is None and "not stored" in graddrop.checked
    for row in (*NYUV2_MTAN.rows, *CITYSCAPES_MTAN.rows):
        assert "could not be opened" in row.checked  # nobody reads these as checked in the PDF
    assert RECIPES["nyuv2-mtan"].published_baseline is NYUV2_MTAN.baseline
    assert RECIPES["cityscapes-mtan"].published == CITYSCAPES_MTAN.rows
    for name in ("celeba-resnet18", "multimnist-lenet"):
        assert RECIPES[name].published == () and RECIPES[name].published_baseline is None
        assert any("no published numbers are stored" in note for note in RECIPES[name].notes)


def test_a_single_mistyped_cell_is_caught() -> None:
    ls = next(row for row in NYUV2_MTAN.rows if row.label == "LS")
    typo = replace(  # 47.50 typed as 45.70 (two digits swapped)
        ls, metrics={**ls.metrics, "normals": {**ls.metrics["normals"], "within_22.5": 0.457}}
    )
    overall, tolerance = _recomputed(typo, NYUV2_MTAN.baseline)
    assert ls.delta_m is not None and abs(overall - ls.delta_m) > tolerance
