"""Atomic writes: an interrupted save leaves the old file intact and no partial file."""

from __future__ import annotations

import os

import pytest
import torch

from taskbalance.fileio import atomic_write
from taskbalance.training import checkpoint as ckpt


def _listing(directory):
    return sorted(os.listdir(directory))


def test_interrupted_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"epoch": 1, "w": torch.arange(4.0)})
    before = path.read_bytes()

    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.write(b"half-written")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["checkpoint.pt"]
    assert ckpt.load_checkpoint(path)["epoch"] == 1


def test_interrupted_first_save_creates_nothing(tmp_path):
    def boom(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "results.json", boom)
    assert _listing(tmp_path) == []


def test_load_missing_checkpoint_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint.*resume=False"):
        ckpt.load_checkpoint(tmp_path / "checkpoint.pt")


def test_load_rejects_foreign_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not a taskbalance checkpoint"):
        ckpt.load_checkpoint(path)


def test_rng_state_round_trip():
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(3)
    state = ckpt.capture_rng_state({"loader": gen})
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))  # noqa: NPY002
    ckpt.restore_rng_state(state, {"loader": gen})
    second = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])
