"""Published numbers beside ours: the section a leaderboard gets when a recipe was used.

For the recipe's published single-task row and each published method row
(:class:`~taskbalance.training.published_tables.PublishedRow`), one line with the paper's values
and its Δm% as printed, and one with this comparison's mean (± std over seeds) of the same
method and metrics (our single-task baselines for the single-task row), so a reader sees at a
glance whether the run reproduces the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["published_section"]


def _cell(value: float | None, std: float | None = None, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"


def _ours(mine: Mapping[str, Any], columns: list[tuple[str, str]]) -> list[str]:
    stats = [mine["metrics"].get(t, {}).get(m) for t, m in columns]
    cells = [_cell(s["mean"], s["std"]) if s else "–" for s in stats]
    delta = mine.get("delta_m")
    return [*cells, _cell(delta["mean"], delta["std"], 2) if delta else "–"]


def _baseline_lines(recipe: Any, board: Mapping[str, Any], columns: list[tuple[str, str]]) -> list:
    """The paper's single-task row, then ours (the mean single-task baselines)."""
    row = recipe.published_baseline
    if row is None:
        return []
    cells = [_cell(row.metrics.get(t, {}).get(m)) for t, m in columns]
    lines = [[f"published ({row.source})", row.label, *cells, "0 (reference)"]]
    base = board.get("baseline", {})
    metrics = base.get("metrics", {})
    ours = [_cell(metrics.get(t, {}).get(m)) for t, m in columns]
    lines.append([f"ours ({base.get('seeds', 0)} seed(s))", "single-task", *ours, "0 (reference)"])
    return lines


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
    rows: list[list[str]] = _baseline_lines(recipe, board, columns)
    for row in recipe.published:
        cells = [_cell(row.metrics.get(t, {}).get(m)) for t, m in columns]
        rows.append([f"published ({row.source})", row.label, *cells, _cell(row.delta_m, None, 2)])
        mine = ours.get(row.method)
        if mine is None:
            rows.append(["ours", row.method, *("not run" for _ in range(len(columns) + 1))])
            continue
        rows.append([f"ours ({mine['seeds']} seed(s))", row.method, *_ours(mine, columns)])
    head = ["row", "method", *(f"{t} {m}" for t, m in columns), "Δm%"]
    lines = [
        f"## Published numbers (recipe {recipe.name})",
        "",
        f"Protocol: {recipe.summary()}. Follows {recipe.source}.",
        "",
        *markdown_table(head, rows, align=["left", "left", *("right" for _ in head[2:])]),
    ]
    lines += [
        "",
        "Δm%: the paper's against its single-task row, as printed; ours against our single-task "
        "baselines. Where the published numbers were read:",
    ]
    everything = [r for r in (recipe.published_baseline,) if r is not None] + list(recipe.published)
    for checked in dict.fromkeys(row.checked for row in everything):  # once each
        labels = ", ".join(row.label for row in everything if row.checked == checked)
        lines.append(f"- {labels}: {checked}")
    lines += [f"- note: {note}" for note in recipe.notes]
    return "\n".join(lines) + "\n"
