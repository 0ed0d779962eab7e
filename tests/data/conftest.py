"""Shared fixtures of the data tests: tiny benchmarks generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskbalance.data import Benchmark, load_benchmark

BENCHMARKS = ("multidigits", "scenes", "pingpong")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the session (keeps ~/.cache untouched)."""
    return tmp_path_factory.mktemp("taskbalance-cache")


@pytest.fixture(scope="session")
def tiny(data_cache: Path) -> dict[str, Benchmark]:
    """Every built-in benchmark at size "tiny", seed 0."""
    return {name: load_benchmark(name, size="tiny", cache_dir=data_cache) for name in BENCHMARKS}
