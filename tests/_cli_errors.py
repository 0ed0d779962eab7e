"""The check every command-line error test makes (shared by the tests/test_cli*.py files)."""

from __future__ import annotations

from taskbalance.cli import main


def user_error(capsys, argv, *needles) -> str:
    """``argv`` fails with status 2 and one stderr line, no traceback, that names every needle;
    returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
