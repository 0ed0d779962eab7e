"""Benchmark container, in-memory multi-task dataset and the registry of built-in benchmarks.

A built-in benchmark is generated procedurally (no download, ever), deterministically from a seed,
and cached as an uncompressed ``.npz`` file keyed by name, generator version, seed and size::

    bench = load_benchmark("multidigits", seed=0, size="tiny")
    model = bench.build_model()
    x, targets, masks = bench.train[0]

Target conventions (shared by the built-in benchmarks and the real-dataset loaders):

===================  ===========================  =============================================
task kind            target                       "missing" inside the target
===================  ===========================  =============================================
classification       ``int64`` scalar             -
segmentation         ``int64 [H, W]``             ignore index (255)
depth                ``float32 [1, H, W]``        0 = invalid pixel
surface normals      ``float32 [3, H, W]``        zero vector = invalid pixel
ball position        ``float32 [2]`` (x, y) px    -
===================  ===========================  =============================================

Inputs are float32 in ``[0, 1]`` (images ``[C, H, W]``, clips ``[C*K, H, W]``); datasets keep
them as ``uint8`` in memory and convert per item.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from taskbalance.data.dataset import Batch, MultiTaskDataset
from taskbalance.fileio import atomic_write
from taskbalance.validation import is_int, registered

if TYPE_CHECKING:  # pragma: no cover
    from taskbalance.models import MultiTaskModel
    from taskbalance.tasks import Task

__all__ = [
    "Batch",
    "Benchmark",
    "BenchmarkSpec",
    "MultiTaskDataset",
    "SplitArrays",
    "available_benchmarks",
    "default_cache_dir",
    "load_benchmark",
    "register_benchmark",
]

SPLITS = ("train", "val", "test")
_CACHE_FORMAT = 3  # bump when the .npz layout changes (3: with a manifest)
_MANIFEST = "__manifest__"


@dataclass
class SplitArrays:
    """Numpy arrays of one generated split (what the generators return and the cache stores)."""

    inputs: np.ndarray
    targets: dict[str, np.ndarray]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def to_dataset(self) -> MultiTaskDataset:
        """Wrap the arrays (without copying) in a :class:`MultiTaskDataset`."""
        return MultiTaskDataset(
            torch.from_numpy(self.inputs),
            {k: torch.from_numpy(v) for k, v in self.targets.items()},
            extras=self.extras,
        )


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to build one registered benchmark.

    Attributes:
        name: registry name.
        description: one line.
        version: bump when the generator's output changes (invalidates caches).
        default_size: every size/generation parameter with its default value.
        tiny_size: overrides of ``default_size`` for ``size="tiny"`` (tests, smoke runs).
        task_names: task names, in order.
        generate: ``(seed, params) -> {"train"|"val"|"test": SplitArrays}``.
        make_tasks: ``params -> list[Task]`` (imports ``taskbalance.tasks`` lazily).
        make_model: ``(params, options) -> MultiTaskModel`` (imports ``taskbalance.models``
            lazily).
        input_shape: ``params -> shape of one input``.
    """

    name: str
    description: str
    version: int
    default_size: Mapping[str, Any]
    tiny_size: Mapping[str, Any]
    task_names: tuple[str, ...]
    generate: Callable[[int, dict[str, Any]], dict[str, SplitArrays]]
    make_tasks: Callable[[dict[str, Any]], list[Task]]
    make_model: Callable[[dict[str, Any], dict[str, Any]], MultiTaskModel]
    input_shape: Callable[[dict[str, Any]], tuple[int, ...]]

    def resolve_size(self, size: str | Mapping[str, Any]) -> dict[str, Any]:
        """Full parameter dict for ``size`` ("default", "tiny" or a dict of overrides)."""
        params = dict(self.default_size)
        if isinstance(size, str):
            if size == "tiny":
                params.update(self.tiny_size)
            elif size != "default":
                raise ValueError(
                    f"size must be 'default', 'tiny' or a dict of overrides, got {size!r}"
                )
            return params
        if not isinstance(size, Mapping):
            raise ValueError(f"size must be 'default', 'tiny' or a dict, got {type(size).__name__}")
        overrides = dict(size)
        base = overrides.pop("base", "default")
        if base not in ("default", "tiny"):
            raise ValueError(f"size['base'] must be 'default' or 'tiny', got {base!r}")
        if base == "tiny":
            params.update(self.tiny_size)
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise ValueError(
                f"unknown size option(s) {unknown} for benchmark {self.name!r}; "
                f"valid options: {sorted(params)} (and 'base')"
            )
        for key, value in overrides.items():
            default = params[key]
            if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, int | float) and not isinstance(value, int | float)
            ):
                raise ValueError(
                    f"size option {key!r} of {self.name!r} must be like {default!r}, got {value!r}"
                )
        params.update(overrides)
        for split in SPLITS:
            if split in params and (not isinstance(params[split], int) or params[split] < 1):
                raise ValueError(
                    f"size option {split!r} must be a positive int, got {params[split]!r}"
                )
        return params


_REGISTRY: dict[str, BenchmarkSpec] = {}
_BUILTINS_LOADED = False


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Add a benchmark to the registry (re-registering a name replaces it)."""
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from taskbalance.data import (  # noqa: F401  (registers)
            multidigits,
            pingpong,
            scenes,
            synthetic_groups,
            synthetic_mtl,  # noqa: F401  (registers)
        )


def available_benchmarks() -> list[str]:
    """Names of the registered benchmarks, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_spec(name: str) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of ``name``; ``ValueError`` listing valid names otherwise."""
    _ensure_builtins()
    return registered(_REGISTRY, name, "benchmark")


def default_cache_dir() -> Path:
    """``$TASKBALANCE_CACHE`` if set, else ``~/.cache/taskbalance``."""
    env = os.environ.get("TASKBALANCE_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/taskbalance").expanduser()


class Benchmark:
    """A generated multi-task benchmark: three splits, its tasks and a default model.

    Attributes:
        name: benchmark name.
        train, val, test: :class:`MultiTaskDataset` splits yielding ``(inputs, targets, masks)``.
        task_names: task names, in order.
        input_shape: shape of one input tensor.
        params: the full generation parameters (size options).
        seed: the generation seed.
    """

    def __init__(
        self,
        spec: BenchmarkSpec,
        params: dict[str, Any],
        seed: int,
        splits: Mapping[str, MultiTaskDataset],
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = params
        self.seed = seed
        self.train = splits["train"]
        self.val = splits["val"]
        self.test = splits["test"]
        self.task_names = list(spec.task_names)
        self.input_shape = tuple(spec.input_shape(params))
        self._tasks: list[Task] | None = None

    @property
    def tasks(self) -> list[Task]:
        """The benchmark's :class:`taskbalance.tasks.Task` objects (built on first access)."""
        if self._tasks is None:
            self._tasks = list(self.spec.make_tasks(self.params))
        return self._tasks

    def build_model(self, **options: Any) -> MultiTaskModel:
        """A fresh default :class:`taskbalance.models.MultiTaskModel` for this benchmark.

        Options depend on the benchmark (e.g. ``width``); unknown options raise ``ValueError``.
        """
        return self.spec.make_model(self.params, dict(options))

    def dataloaders(
        self, batch_size: int = 64, *, num_workers: int = 0, seed: int = 0, drop_last: bool = False
    ) -> tuple[DataLoader, DataLoader, DataLoader]:
        """``(train, val, test)`` loaders; train is shuffled with a seeded generator."""
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(
            self.train,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            generator=generator,
            drop_last=drop_last,
        )
        val = DataLoader(self.val, batch_size=batch_size, num_workers=num_workers)
        test = DataLoader(self.test, batch_size=batch_size, num_workers=num_workers)
        return train, val, test

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS)
        return (
            f"Benchmark({self.name!r}, tasks={self.task_names}, input_shape={self.input_shape}, "
            f"{sizes}, seed={self.seed})"
        )


def _cache_key(spec: BenchmarkSpec, seed: int, params: dict[str, Any]) -> str:
    return json.dumps(
        {"v": spec.version, "format": _CACHE_FORMAT, "seed": seed, "params": params}, sort_keys=True
    )


def _cache_path(cache_dir: Path, spec: BenchmarkSpec, seed: int, params: dict[str, Any]) -> Path:
    digest = hashlib.sha256(_cache_key(spec, seed, params).encode()).hexdigest()[:16]
    return cache_dir / f"{spec.name}-v{spec.version}-seed{seed}-{digest}.npz"


def _save(path: Path, splits: Mapping[str, SplitArrays], key: str) -> None:
    """Write the arrays with a manifest (the cache key, every array's dtype and shape) that
    :func:`_load` checks."""
    arrays: dict[str, np.ndarray] = {}
    for split, data in splits.items():
        arrays[f"{split}/inputs"] = data.inputs
        arrays.update({f"{split}/target/{k}": _compact(v) for k, v in data.targets.items()})
        arrays.update({f"{split}/extra/{k}": v for k, v in data.extras.items()})
    manifest = {"key": key, "arrays": {k: [v.dtype.str, list(v.shape)] for k, v in arrays.items()}}
    arrays[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    # Several processes may fill the cache at once: a temporary name of their own each, and no
    # fault-injection kill point (the cache is not part of a run's state).
    atomic_write(
        path,
        lambda handle: np.savez(handle, **arrays),  # type: ignore[arg-type]
        temp_prefix=path.stem,
        temp_suffix=".tmp.npz",
        kill_point=False,
    )


#: A temporary cache file older than this was left by a killed process, not one still writing.
STALE_SECONDS = 3600


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of ``path`` that killed processes left (best effort)."""
    import time

    for tmp in path.parent.glob(f"{path.stem}*.tmp.npz"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()


def _compact(array: np.ndarray) -> np.ndarray:
    """Integer arrays whose values fit in ``uint8`` are stored as ``uint8``."""
    if np.issubdtype(array.dtype, np.integer) and array.size:
        if int(array.min()) >= 0 and int(array.max()) <= 255:
            return array.astype(np.uint8)
    return array


class _CorruptCache(ValueError):
    pass


def _load(path: Path, task_names: tuple[str, ...], key: str) -> dict[str, SplitArrays]:
    """Read a cache file written by :func:`_save`; ``_CorruptCache`` (or a zip/OS error) when
    its manifest is missing or does not match the key, the arrays' names, dtypes or shapes."""
    splits = {s: SplitArrays(np.empty(0), {}, {}) for s in SPLITS}
    with np.load(path, allow_pickle=False) as data:
        if _MANIFEST not in data.files:
            raise _CorruptCache("no manifest")
        manifest = json.loads(data[_MANIFEST].tobytes().decode())
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            raise _CorruptCache("written for other generation settings")
        expected = manifest.get("arrays") or {}
        names = [k for k in data.files if k != _MANIFEST]
        if sorted(names) != sorted(expected):
            raise _CorruptCache("its arrays are not those of the manifest")
        for member in names:
            array = data[member]  # reading checks the zip member's CRC
            if [array.dtype.str, list(array.shape)] != expected[member]:
                raise _CorruptCache(f"array {member!r} has another dtype or shape than recorded")
            split, _, rest = member.partition("/")
            kind, _, name = rest.partition("/")
            if split not in splits:
                raise _CorruptCache(f"unknown split in array name {member!r}")
            if kind == "inputs":
                splits[split].inputs = array
            elif kind == "target":
                # integer targets are class indices: int64 in memory, compact on disk
                is_int = np.issubdtype(array.dtype, np.integer)
                splits[split].targets[name] = array.astype(np.int64) if is_int else array
            else:
                splits[split].extras[name] = array
    for split, arrays in splits.items():
        lengths = {len(arrays.inputs), *(len(t) for t in arrays.targets.values())}
        if set(arrays.targets) != set(task_names) or arrays.inputs.ndim < 2 or len(lengths) != 1:
            raise _CorruptCache(f"split {split!r} is incomplete")
    return splits


def load_benchmark(
    name: str,
    *,
    seed: int = 0,
    size: str | Mapping[str, Any] = "default",
    cache_dir: str | os.PathLike[str] | None = None,
    labels: Mapping[str, float] | None = None,
) -> Benchmark:
    """Generate (or load from the cache) a built-in benchmark.

    Args:
        name: one of :func:`available_benchmarks`.
        seed: generation seed; the same seed gives identical arrays.
        size: ``"default"``, ``"tiny"`` (a few dozen samples, for tests) or a dict overriding
            generation options (e.g. ``{"train": 500, "image_size": 28}``; ``{"base": "tiny",
            ...}`` overrides the tiny preset instead).
        cache_dir: where generated arrays are cached (default :func:`default_cache_dir`).
            Caching is always on; pass a temporary directory to keep the default cache clean.
            An unreadable cache file is regenerated; an unwritable directory is skipped.
        labels: per-task fraction of TRAINING samples that keep their label, e.g.
            ``{"depth": 0.2}`` (see :func:`taskbalance.data.partial.apply_partial_labels`).

    Raises:
        ValueError: unknown benchmark, size option, task in ``labels`` or a bad fraction.
    """
    spec = get_spec(name)
    if not (is_int(seed) or isinstance(seed, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    params = spec.resolve_size(size)
    if labels:  # validate before spending time on generation
        from taskbalance.data.partial import validate_fractions

        validate_fractions(labels, spec.task_names)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_path(directory, spec, seed, params)
    key = _cache_key(spec, seed, params)
    arrays: dict[str, SplitArrays] | None = None
    if path.exists():
        try:
            arrays = _load(path, spec.task_names, key)
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            print(
                f"taskbalance: the cached {name} data {str(path)!r} is unreadable ({reason}); "
                "regenerating it",
                file=sys.stderr,
                flush=True,
            )
    if arrays is None:
        arrays = spec.generate(seed, dict(params))
        _remove_stale_temporaries(path)
        try:
            _save(path, arrays, key)
        except OSError:
            pass  # read-only cache location: still usable, just not cached
    splits = {s: arrays[s].to_dataset() for s in SPLITS}
    if labels:
        from taskbalance.data.partial import apply_partial_labels

        splits["train"] = apply_partial_labels(splits["train"], labels, seed=seed)
    return Benchmark(spec, params, seed, splits)


def split_seeds(seed: int, name: str) -> np.random.Generator:
    """A numpy generator seeded from ``seed`` and a stable hash of ``name``."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def check_options(
    options: Mapping[str, Any], valid: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """Merge ``options`` into ``valid`` defaults; ``ValueError`` naming unknown options."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {what}; valid: {sorted(valid)}")
    return {**valid, **options}


def sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean float32 camera noise with standard deviation ``std`` (uniform: fast to draw)."""
    noise = rng.random(shape, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(std * np.sqrt(12.0))
    return noise


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in ``[0, 1]`` (clipped, modified in place) to rounded ``uint8``."""
    np.clip(images, 0.0, 1.0, out=images)
    images *= np.float32(255.0)
    images += np.float32(0.5)
    return images.astype(np.uint8)
