"""Atomic file writes, checkpoints and random-number-generator states.

Every file of a run is written atomically: to a temporary file in the same directory, flushed and
``fsync``-ed, then moved over the destination with ``os.replace`` (atomic on POSIX and Windows).
A run killed mid-write leaves the previous file intact; the temporary file it leaves behind is
removed when the run is continued (:func:`remove_stale_temporaries`). Files get the permissions
of a normally created file (``0666`` minus the umask), not ``mkstemp``'s ``0600``.

Checkpoints hold only tensors and plain Python values (the numpy RNG state is stored as a
tensor), so they are read with ``torch.load(weights_only=True)``: a tampered file cannot run code.

Fault injection (tests only): with ``TASKBALANCE_FAULT_KILL=N:PHASE`` in the environment the
process kills itself with ``SIGKILL`` at its ``N``-th atomic write, ``PHASE`` ``before`` (the
temporary file is written, not yet renamed) or ``after`` (renamed); with
``TASKBALANCE_FAULT_LOG=FILE`` every atomic write appends its number and path to ``FILE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "atomic_replace",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "capture_rng_state",
    "content_digest",
    "load_checkpoint",
    "load_torch_file",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
    "save_torch_file",
]

CHECKPOINT_NAME = "checkpoint.pt"
# 2: plain tensors and Python values only (format 1 pickled numpy arrays; not loadable safely)
CHECKPOINT_FORMAT = 2
_TMP_SUFFIX = ".tmp"
_DIGEST_KEY = "digest"
_FAULT_ENV = "TASKBALANCE_FAULT_KILL"
_FAULT_LOG_ENV = "TASKBALANCE_FAULT_LOG"
_writes = 0  # atomic writes of this process (for fault injection)
_last_path = ""


def _file_mode() -> int:
    """What ``open()`` would give a new file: ``0o666`` minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fault_point(phase: str) -> None:
    """Kill this process at the write and phase named by ``TASKBALANCE_FAULT_KILL=N:PHASE``."""
    spec, log = os.environ.get(_FAULT_ENV), os.environ.get(_FAULT_LOG_ENV)
    if not spec and not log:
        return
    global _writes
    if phase == "before":
        _writes += 1
    if log and phase == "after":
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{_writes} {_last_path}\n")
    count, _, when = (spec or "0").partition(":")
    if _writes == int(count) and (when or "before") == phase:
        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``directory`` (call it only
    where no other process is writing, e.g. in a run folder when the run starts)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(f".*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, fsync it, then rename it.

    If ``write`` raises (or the process is interrupted), the temporary file is removed and
    ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with contextlib.suppress(OSError):  # not on every platform
            os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if os.environ.get(_FAULT_ENV) or os.environ.get(_FAULT_LOG_ENV):
            global _last_path
            _last_path = str(path)
            _fault_point("before")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    if os.environ.get(_FAULT_ENV) or os.environ.get(_FAULT_LOG_ENV):
        _fault_point("after")
    return path


def atomic_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Move a finished file ``src`` over ``dst`` (same directory) and persist the rename."""
    dst = Path(dst)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    return dst


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


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


def save_torch_file(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """``torch.save`` a dict atomically, adding ``digest``: a hash of every value in it, which
    :func:`load_torch_file` checks (a flipped bit in a tensor would otherwise load silently)."""
    data = {**payload, _DIGEST_KEY: content_digest(payload)}
    return atomic_write(path, lambda handle: torch.save(data, handle))


def content_digest(obj: Any) -> str:
    """A BLAKE2 hash of tensors (dtype, shape, bytes) and plain values, in order."""
    h = hashlib.blake2b(digest_size=16)

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, Mapping):
            h.update(f"D{len(value)}".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            h.update(f"{type(value).__name__[0]}{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            h.update(f"{type(value).__name__}:{value!r};".encode())

    feed(obj)
    return h.hexdigest()


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


def load_torch_file(
    path: Path, *, what: str, fix: str, require_digest: bool = False, map_location: Any = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)`` of a dict written by :func:`save_torch_file`,
    its digest checked (required with ``require_digest``). Every failure is one ``ValueError``
    naming the file (as ``what``), what is wrong and ``fix``, what to do."""
    problem: str | None
    if path.stat().st_size == 0:
        problem = "is empty"
    else:
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
            problem = _digest_problem(data, what if require_digest else None)
            if problem is None:
                return data
        except pickle.UnpicklingError as err:
            text = str(err)
            if "weights_only" in text or "Unsupported global" in text:
                problem = (
                    "cannot be loaded safely: it is corrupt or holds objects other than tensors "
                    "and plain values (refused: unpickling them could run code)"
                )
            else:
                problem = f"is corrupt ({_short(err)})"
        except Exception as err:  # noqa: BLE001 - whatever a damaged file makes torch raise
            problem = f"is truncated or corrupt ({_short(err)})"
    raise ValueError(f"{what} {str(path)!r} {problem}; {fix}")


def _digest_problem(data: Any, required_for: str | None) -> str | None:
    """Pop and check the digest of ``data``; ``None`` when it matches (or is absent and not
    required for the kind of file ``required_for``)."""
    if not isinstance(data, dict) or _DIGEST_KEY not in data:
        if required_for is None:
            return None
        return f"is not a taskbalance {required_for} of this version (it has no content digest)"
    stored = data.pop(_DIGEST_KEY)
    if stored != content_digest(data):
        return "is corrupt (its content does not match the digest written with it)"
    return None


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."
