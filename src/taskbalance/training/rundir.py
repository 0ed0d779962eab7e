"""Run folders: one folder never holds the files of two different runs.

A command that would start a new run in a folder holding another run's results refuses with one
line naming ``--resume`` (continue that run) and ``--overwrite`` (delete its files first);
:func:`clear_run` deletes exactly the files a run writes, nothing else in the folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from taskbalance.fileio import remove_stale_temporaries

from .checkpoint import CHECKPOINT_NAME
from .trainer_state import STAGED_BEST_GLOB

__all__ = [
    "RESULT_FILES",
    "RUN_FILES",
    "RunFolderError",
    "check_new_run",
    "clear_run",
    "held_results",
    "load_results_file",
]

#: Files that hold a run's results: their presence means the folder belongs to a run.
RESULT_FILES = (CHECKPOINT_NAME, "results.json", "best.pt")
#: Every file (and folder) a training run writes.
RUN_FILES = (*RESULT_FILES, "config.yaml", "history.jsonl", "history.csv", "tensorboard")


class RunFolderError(ValueError):
    """A command would mix two runs' files in one folder."""


def held_results(folder: str | os.PathLike[str], names: Sequence[str] = RESULT_FILES) -> list[str]:
    """The result files (``names``) that exist in ``folder``."""
    path = Path(folder)
    return [n for n in names if (path / n).exists()]


def check_new_run(
    folder: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool,
    names: Sequence[str] = RESULT_FILES,
    what: str = "run",
) -> None:
    """Refuse to start a new run in ``folder`` while it holds another run's results.

    Raises:
        RunFolderError: ``resume`` and ``overwrite`` together; or neither while ``folder``
            holds any of ``names``.
    """
    if resume and overwrite:
        raise RunFolderError(
            "--resume continues the run in the folder and --overwrite deletes it: give one"
        )
    if resume or overwrite:
        return
    held = held_results(folder, names)
    if held:
        raise RunFolderError(
            f"{str(folder)!r} holds the results of another {what} ({', '.join(held)}); continue "
            "it with --resume, replace it with --overwrite, or choose another --out folder"
        )


def clear_run(folder: str | os.PathLike[str], names: Sequence[str] = RUN_FILES) -> list[str]:
    """Delete the files and folders ``names`` (a run's files), staged best weights and leftover
    temporary files from ``folder``; other files stay. Returns the names deleted."""
    path = Path(folder)
    if not path.is_dir():
        return []
    removed = []
    for name in names:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
            removed.append(name)
        elif target.exists() or target.is_symlink():
            target.unlink()
            removed.append(name)
    for staged in path.glob(STAGED_BEST_GLOB):
        staged.unlink(missing_ok=True)
        removed.append(staged.name)
    removed += [p.name for p in remove_stale_temporaries(path)]
    return removed


def load_results_file(path: str | os.PathLike[str]) -> dict:
    """Read the ``results.json`` of an earlier run, validated: a JSON object with ``config``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, not JSON or not a run's results (one line naming it and
            what to do).
    """
    import json

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no results.json at {str(file)!r}; has the run finished?")
    fix = (
        "delete that run folder (or rerun with --overwrite) so that the run is trained again"
    )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"results of an earlier run {str(file)!r} are not readable JSON ({err}); {fix}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(
            f"{str(file)!r} does not hold the results of a taskbalance run (no 'config'); {fix}"
        )
    return data
