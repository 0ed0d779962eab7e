"""Checkpoints and random-number-generator states.

Checkpoints hold only tensors and plain Python values (the numpy RNG state is stored as a
tensor), so they are read with ``torch.load(weights_only=True)``: a tampered file cannot run code.
They are written atomically with a content digest by :mod:`taskbalance.fileio` (import its
helpers from there).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taskbalance.fileio import load_torch_file, save_torch_file

__all__ = [
    "CHECKPOINT_NAME",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
# 2: plain tensors and Python values only (format 1 pickled numpy arrays; not loadable safely)
CHECKPOINT_FORMAT = 2


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """States of torch (CPU and, if initialised, every CUDA device), numpy, ``random`` and of the
    named extra generators (e.g. the DataLoader's shuffling generator)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),  # noqa: NPY002
        "python": random.getstate(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name in saved:
            generator.set_state(saved[name])


def _numpy_state_to_plain(state: Any) -> dict[str, Any]:
    """The legacy numpy RNG state as a tensor and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _numpy_state_from_plain(state: Mapping[str, Any]) -> tuple[Any, ...]:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write a checkpoint dict atomically with ``torch.save`` (with a digest of its content)."""
    return save_torch_file(path, {"format": CHECKPOINT_FORMAT, **state})



def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: tensors and
    plain Python values only, so a tampered file cannot run code).

    Raises:
        FileNotFoundError: there is no checkpoint at ``path`` (the message says how to start).
        ValueError: the file is empty, truncated, corrupt, holds anything but tensors and plain
            values, or is not a taskbalance checkpoint (one line naming the file and what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: no checkpoint at {str(path)!r}; start the run without resume "
            "(resume=False) or point out_dir at the directory of the run to continue"
        )
    data = load_torch_file(
        path,
        what="checkpoint",  # format 1 (taskbalance 0.1) pickled numpy: refused like any object
        require_digest=True,
        fix="it cannot be resumed: start the run again with --overwrite (overwrite=True)",
        map_location=map_location,
    )
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{str(path)!r} is not a taskbalance checkpoint of format {CHECKPOINT_FORMAT} (found "
            f"{found!r}); it cannot be resumed: start the run again with --overwrite"
        )
    return data


