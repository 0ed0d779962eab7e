from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster and does not thrash a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One benchmark cache for the whole session (the tiny benchmark is generated once)."""
    return tmp_path_factory.mktemp("benchmark-cache")


@pytest.fixture
def make_config(cache_dir: Path, tmp_path: Path):
    """``make_config(name, **overrides)``: a tiny, fast TrainConfig in tmp_path/name."""

    def make(name: str = "run", **overrides):
        from taskbalance.training import TrainConfig

        data = {
            "benchmark": "multidigits",
            "size": "tiny",
            "method": "ew",
            "epochs": 2,
            "steps": 2,
            "batch_size": 16,
            "model_options": {"width": 8, "hidden": 16},
            "cache_dir": str(cache_dir),
            "out_dir": str(tmp_path / name),
            "progress": False,
            "tensorboard": False,
        }
        data.update(overrides)
        return TrainConfig.from_dict(data)

    return make
