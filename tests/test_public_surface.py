"""The public surface: what docs/architecture.md calls stable and what README uses exists, and
every ``__all__`` of the stable subpackages names something real."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import taskbalance

ROOT = Path(__file__).resolve().parents[1]
STABLE_SUBPACKAGES = [
    "taskbalance.tasks",
    "taskbalance.models",
    "taskbalance.data",
    "taskbalance.training",
    "taskbalance.experiments",
    "taskbalance.fileio",
    "taskbalance.validation",
]


def _stable_paragraph() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index("Stable (semantic versioning applies)")
    return text[start : text.index("\n\n", start)]


def test_the_top_level_exports_every_name_the_docs_call_stable() -> None:
    listed = re.search(r"exports \(([^)]*)\)", _stable_paragraph())
    assert listed is not None, "docs/architecture.md no longer lists the top-level exports"
    names = re.findall(r"`(\w+)`", listed.group(1))
    assert {"Task", "delta_m", "create", "Balancer"} <= set(names)
    assert sorted(set(names)) == sorted(n for n in taskbalance.__all__ if n != "__version__")


def test_readme_uses_only_exported_top_level_names() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    used = set(re.findall(r"\btb\.(\w+)", readme))
    assert used and used <= set(taskbalance.__all__), used - set(taskbalance.__all__)


@pytest.mark.parametrize("module", ["taskbalance", *STABLE_SUBPACKAGES])
def test_every_exported_name_exists(module: str) -> None:
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    assert exported, f"{module} has no __all__"
    missing = [name for name in exported if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported), f"{module}.__all__ lists a name twice"
