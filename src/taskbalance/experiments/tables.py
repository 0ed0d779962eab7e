"""The one Markdown table formatter of the reports (compare's leaderboard, the workflow table).

Cells arrive already formatted (each report knows its own number format); this module only lays
them out, so every table of taskbalance has the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_table"]

_RULES = {"left": "---", "right": "---:"}


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: Sequence[str] | None = None,
) -> list[str]:
    """The lines of a Markdown table: ``header``, its rule, one line per row.

    Args:
        header: the column titles.
        rows: the cells of each row, as text, one per column.
        align: ``"left"`` or ``"right"`` per column (default: every column left).

    Raises:
        ValueError: a row or ``align`` whose length is not the header's, or an unknown
            alignment.
    """
    width = len(header)
    align = ["left"] * width if align is None else list(align)
    if len(align) != width:
        raise ValueError(f"align has {len(align)} entries for {width} columns")
    unknown = sorted({a for a in align if a not in _RULES})
    if unknown:
        raise ValueError(f"unknown alignment(s) {unknown}; use 'left' or 'right'")
    lines = [_line(header), "|" + "|".join(_RULES[a] for a in align) + "|"]
    for k, cells in enumerate(rows):
        if len(cells) != width:
            raise ValueError(f"row {k} has {len(cells)} cells for {width} columns")
        lines.append(_line(cells))
    return lines


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
