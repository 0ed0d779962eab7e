"""taskbalance recipes: the published protocols."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``recipes`` command."""
    del defaults  # it trains nothing
    p = sub.add_parser(
        "recipes",
        help="list the published protocols (--recipe NAME)",
        description="List the recipes: dataset, model, protocol, the paper and table each follows "
        "and the published numbers stored with it.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also the code read and the notes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from taskbalance.training.recipes import RECIPES, available_recipes

    for name in available_recipes():
        recipe = RECIPES[name]
        print(f"{name}  (dataset {recipe.dataset})")
        print(f"  model:     {recipe.model}")
        print(f"  protocol:  {recipe.summary()}")
        print(f"  source:    {recipe.source}")
        if recipe.published:
            labels = ", ".join(row.label for row in recipe.published)
            print(f"  published: {len(recipe.published)} rows ({labels}); --verbose shows them")
        if args.verbose:
            rows = [r for r in (recipe.published_baseline,) if r is not None]
            rows += recipe.published
            for row in rows:
                cells = ", ".join(
                    f"{t} {m} {v:.4g}" for t, ms in row.metrics.items() for m, v in ms.items()
                )
                delta = "" if row.delta_m is None else f", Δm% {row.delta_m:.2f}"
                print(f"  published: {row.label}: {cells}{delta} ({row.source})")
            for checked in dict.fromkeys(row.checked for row in rows):
                print(f"  read:      {checked}")
            print(f"  code:      {recipe.code}")
            for note in recipe.notes:
                print(f"  note:      {note}")
    print("use: taskbalance compare|train|tune --recipe NAME --data-root DIR (flags override it)")
    return 0
