"""README.md's methods table is the registry's (the generator's --check, as CI runs it)."""

from __future__ import annotations

from pathlib import Path

from taskbalance import available_methods
from taskbalance.tools import readme_tables

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_methods_table_is_current() -> None:
    assert readme_tables.main(["--check", "--readme", str(README)]) == 0
    table = readme_tables.methods_table()
    assert all(f"| `{name}` |" in table for name in available_methods())


def test_check_fails_on_an_outdated_table_and_the_writer_fixes_it(tmp_path, capsys) -> None:
    stale = README.read_text(encoding="utf-8").replace("| `ew` | loss |", "| `ew` | gradient |")
    path = tmp_path / "README.md"
    path.write_text(stale, encoding="utf-8")
    assert readme_tables.main(["--check", "--readme", str(path)]) == 1
    assert "python -m taskbalance.tools.readme_tables" in capsys.readouterr().err
    assert readme_tables.main(["--readme", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == README.read_text(encoding="utf-8")
