"""No function in src/ longer than 80 lines (from its ``def`` to its last line, docstring
included): a function that long does several jobs; split it into helpers that name them."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "taskbalance"
LIMIT = 80

#: Generated tables (data, not logic) may be longer. None today.
GENERATED_TABLES: set[str] = set()

#: Not split yet (issue 11): each entry names the lines it has today, so the list can only
#: shrink — a listed function that grows, or one that is now short enough, fails the test.
NOT_YET_SPLIT: dict[str, int] = {}


def function_lengths(root: Path = SRC) -> dict[str, int]:
    """``{"path:name": lines}`` of every function and method under ``root``."""
    out: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                key = f"{rel}:{node.name}"
                out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_no_function_over_80_lines() -> None:
    lengths = function_lengths()
    too_long = {
        k: n
        for k, n in lengths.items()
        if n > LIMIT and k not in GENERATED_TABLES and k not in NOT_YET_SPLIT
    }
    assert not too_long, f"functions over {LIMIT} lines (split them): {too_long}"
    grown = {k: (lengths.get(k), n) for k, n in NOT_YET_SPLIT.items() if lengths.get(k, 0) > n}
    assert not grown, f"listed long functions grew (now, listed): {grown}"
    done = [k for k in NOT_YET_SPLIT if lengths.get(k, 0) <= LIMIT]
    assert not done, f"now at most {LIMIT} lines: remove from NOT_YET_SPLIT: {done}"


def test_the_measure_counts_def_to_last_line(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert function_lengths(tmp_path) == {"m.py:long": LIMIT + 1, "m.py:short": 2}


def test_the_trainer_stays_readable() -> None:
    """Issue 11: trainer.py under 500 lines, Trainer.__init__ under 60."""
    path = SRC / "training" / "trainer.py"
    assert len(path.read_text(encoding="utf-8").splitlines()) < 500
    assert function_lengths(SRC / "training")["trainer.py:__init__"] < 60
