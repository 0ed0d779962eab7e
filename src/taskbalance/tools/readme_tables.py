"""Write README.md's methods table from the method registry, or check that it is current.

``python -m taskbalance.tools.readme_tables`` rewrites the table between the markers in
README.md; ``--check`` exits with status 1 (and says how to fix it) when the table differs from
the registry, which CI runs (``.ci/run``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskbalance import available_methods, method_info
from taskbalance.experiments.tables import markdown_table

BEGIN = (
    "<!-- methods table: generated from the registry by "
    "python -m taskbalance.tools.readme_tables -->"
)
END = "<!-- end of methods table -->"


def methods_table() -> str:
    """The Markdown table of every registered method: name, kind, paper, options."""
    rows = []
    for name in available_methods():
        info = method_info(name)
        rows.append([f"`{name}`", info.kind, info.paper, ", ".join(info.options) or "—"])
    return "\n".join(markdown_table(["name", "kind", "paper", "options"], rows))


def render(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`methods_table`."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} and {END!r} around the table")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{methods_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if outdated")
    parser.add_argument("--readme", default="README.md", help="path of README.md")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(
                f"{path}: the methods table differs from the registry; run "
                "python -m taskbalance.tools.readme_tables",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
