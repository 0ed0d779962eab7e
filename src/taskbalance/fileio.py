"""File helpers every layer uses: atomic writes and digest-checked ``torch.save`` files.

Every file taskbalance writes (checkpoints, histories, results, pseudo-labels, benchmark caches)
is written atomically: to a temporary file in the same directory, flushed and ``fsync``-ed, then
moved over the destination with ``os.replace`` (atomic on POSIX and Windows). A process killed
mid-write leaves the previous file intact; the temporary file it leaves behind is removed when
the run is continued (:func:`remove_stale_temporaries`). Files get the permissions of a normally
created file (``0666`` minus the umask), not ``mkstemp``'s ``0600``.

Fault injection (tests only): with ``TASKBALANCE_FAULT_KILL=N:PHASE`` in the environment the
process kills itself with ``SIGKILL`` at its ``N``-th atomic write, ``PHASE`` ``before`` (the
temporary file is written, not yet renamed) or ``after`` (renamed); with
``TASKBALANCE_FAULT_LOG=FILE`` every atomic write appends its number and path to ``FILE``.
Writes made with ``kill_point=False`` (shared caches) are not counted.

This module depends on the standard library and torch only, so it sits in the core layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "atomic_replace",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "content_digest",
    "load_torch_file",
    "remove_stale_temporaries",
    "save_torch_file",
]

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


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    temp_prefix: str | None = None,
    temp_suffix: str = _TMP_SUFFIX,
    kill_point: bool = True,
) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, fsync it, then rename it.

    If ``write`` raises (or the process is interrupted), the temporary file is removed and
    ``path`` keeps its previous content. The temporary file is named
    ``{temp_prefix}XXXX{temp_suffix}`` (default ``.{name}.XXXX.tmp``, which
    :func:`remove_stale_temporaries` finds); ``kill_point=False`` leaves the write out of the
    fault-injection count.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}." if temp_prefix is None else temp_prefix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=temp_suffix)
    faults = kill_point and bool(os.environ.get(_FAULT_ENV) or os.environ.get(_FAULT_LOG_ENV))
    try:
        with contextlib.suppress(OSError):  # not on every platform
            os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if faults:
            global _last_path
            _last_path = str(path)
            _fault_point("before")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    if faults:
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
