"""The one Markdown table formatter."""

from __future__ import annotations

import pytest

from taskbalance.experiments.tables import markdown_table


def test_markdown_table_lays_out_header_rule_and_rows() -> None:
    lines = markdown_table(["a", "b"], [["1", "2"], ["x", "y"]], align=["left", "right"])
    assert lines == ["| a | b |", "|---|---:|", "| 1 | 2 |", "| x | y |"]
    assert markdown_table(["a"], [])[1] == "|---|"


def test_markdown_table_refuses_ragged_rows_and_bad_alignment() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["1", "2"], ["3"]])
    with pytest.raises(ValueError, match="align has 1 entries for 2 columns"):
        markdown_table(["a", "b"], [], align=["left"])
    with pytest.raises(ValueError, match="unknown alignment.*'centre'"):
        markdown_table(["a"], [], align=["centre"])
