"""taskbalance methods: the balancing methods."""

from __future__ import annotations

import argparse
from typing import Any


def add_command(sub: Any, defaults: dict[str, Any]) -> None:
    """The ``methods`` command and its flags."""
    p = sub.add_parser(
        "methods",
        help="list the balancing methods",
        description="List every registered balancing method: kind and paper.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show summaries and options")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import taskbalance

    infos = [taskbalance.method_info(name) for name in taskbalance.available_methods()]
    width = max([len("method")] + [len(i.name) for i in infos])
    print(f"{'method':<{width}}  {'kind':<8}  paper")
    for info in infos:
        print(f"{info.name:<{width}}  {info.kind:<8}  {info.paper or '-'}")
        if args.verbose:
            if info.summary:
                print(f"{'':<{width}}  {'':<8}  {info.summary}")
            print(f"{'':<{width}}  {'':<8}  options: {', '.join(info.options) or 'none'}")
    return 0
