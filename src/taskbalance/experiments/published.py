"""Published numbers beside ours: the section a leaderboard gets when a recipe was used.

For each published row of the recipe (:class:`~taskbalance.training.recipes.PublishedRow`), one
line with the paper's values and one with this comparison's mean (± std over seeds) of the same
method and metrics, so a reader sees at a glance whether the run reproduces the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["published_section"]


def _cell(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if std is None else f"{value:.4f} ± {std:.4f}"


def published_section(recipe_name: str, board: Mapping[str, Any]) -> str:
    """Markdown section comparing the recipe's published rows with ``board`` (a leaderboard of
    :func:`~taskbalance.experiments.report.build_leaderboard`); ``""`` when it stores none."""
    from taskbalance.training.recipes import get_recipe

    from .tables import markdown_table

    recipe = get_recipe(recipe_name)
    if not recipe.published:
        return ""
    columns: list[tuple[str, str]] = []
    for row in recipe.published:
        for task, metrics in row.metrics.items():
            columns.extend((task, m) for m in metrics if (task, m) not in columns)
    ours = {r["method"]: r for r in board.get("rows", [])}
    rows: list[list[str]] = []
    for row in recipe.published:
        cells = [_cell(row.metrics.get(t, {}).get(m)) for t, m in columns]
        rows.append([f"published ({row.source})", row.label, *cells])
        mine = ours.get(row.method)
        if mine is None:
            rows.append(["ours", row.method, *("not run" for _ in columns)])
            continue
        stats = [mine["metrics"].get(t, {}).get(m) for t, m in columns]
        cells = [_cell(s["mean"], s["std"]) if s else "–" for s in stats]
        rows.append([f"ours ({mine['seeds']} seed(s))", row.method, *cells])
    head = ["row", "method", *(f"{t} {m}" for t, m in columns)]
    lines = [
        f"## Published numbers (recipe {recipe.name})",
        "",
        f"Protocol: {recipe.summary()}. Follows {recipe.source}.",
        "",
        *markdown_table(head, rows, align=["left", "left", *("right" for _ in columns)]),
    ]
    lines += ["", "Where the published numbers were read:"]
    for checked in dict.fromkeys(row.checked for row in recipe.published):  # once each
        labels = ", ".join(row.label for row in recipe.published if row.checked == checked)
        lines.append(f"- {labels}: {checked}")
    lines += [f"- note: {note}" for note in recipe.notes]
    return "\n".join(lines) + "\n"
