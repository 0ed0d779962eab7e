"""The registry of real datasets read from disk (``--dataset NAME --data-root DIR``).

Registering one more dataset is one call::

    register_dataset(DatasetSpec(name="mydata", ...))

:func:`load_dataset` reads a registered dataset into a :class:`~taskbalance.data.source.
RealDataSource`; a missing or malformed folder raises one error that names the problem, the
expected layout (files, shapes, dtypes) and the section of ``docs/datasets.md`` to read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from stat import S_ISDIR
from typing import Any

import numpy as np
from torch.utils.data import Subset

from taskbalance.data.source import DatasetSpec, RealDataSource
from taskbalance.validation import is_int, is_real, registered

__all__ = [
    "available_datasets",
    "dataset_fingerprint",
    "dataset_options",
    "get_dataset_spec",
    "load_dataset",
    "register_dataset",
]

#: Options every dataset without a ``val`` folder takes: the fraction of the training folder held
#: out for validation (0: validate on the test split, as the published NYUv2/Cityscapes tables
#: do) and the seed of that split (fixed, so every run of a comparison sees the same split).
HOLDOUT_OPTIONS = {"val_fraction": 0.1, "split_seed": 0}

_REGISTRY: dict[str, DatasetSpec] = {}
_BUILTINS_LOADED = False


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (re-registering a name replaces it)."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register_dataset expects a DatasetSpec, got {type(spec).__name__}")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from taskbalance.data.real.specs import BUILTIN_DATASETS

        for spec in BUILTIN_DATASETS:
            _REGISTRY.setdefault(spec.name, spec)


def available_datasets() -> list[str]:
    """Names of the registered real datasets, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; ``ValueError`` naming the valid names otherwise."""
    _ensure_builtins()
    return registered(_REGISTRY, name, "dataset")


def dataset_options(spec: DatasetSpec, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's options with their defaults filled in; ``ValueError`` naming an unknown
    option or a bad ``val_fraction`` / ``split_seed``."""
    valid = dict(spec.options)
    if "val" not in spec.folders:
        valid.update(HOLDOUT_OPTIONS)
    given = dict(options or {})
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for dataset {spec.name!r}; valid options: "
            f"{', '.join(sorted(valid)) or 'none'}"
        )
    resolved = {**valid, **given}
    if spec.check_options is not None:
        spec.check_options(resolved)
    if "val_fraction" in resolved:
        fraction = resolved["val_fraction"]
        if not is_real(fraction) or not 0 <= fraction < 1:
            raise ValueError(
                f"dataset option 'val_fraction' must be a number in [0, 1), got {fraction!r}"
            )
        if not is_int(resolved["split_seed"]) or resolved["split_seed"] < 0:
            raise ValueError(
                f"dataset option 'split_seed' must be an int >= 0, got {resolved['split_seed']!r}"
            )
    return resolved


def layout_error(spec: DatasetSpec, err: BaseException) -> Exception:
    """``err`` (a missing or malformed file) with the expected layout and the docs appended."""
    message = (
        f"{spec.name}: {err}. Expected layout: {spec.layout}. How to obtain and arrange the "
        f"data: {spec.docs}"
    )
    return FileNotFoundError(message) if isinstance(err, FileNotFoundError) else ValueError(message)


def load_dataset(name: str, root: str | os.PathLike[str], **options: Any) -> RealDataSource:
    """Read the registered dataset ``name`` from the folder ``root``.

    Args:
        name: one of :func:`available_datasets`.
        root: the dataset folder (see ``docs/datasets.md`` for each dataset's layout).
        options: the dataset's options (``DatasetSpec.options``), plus ``val_fraction`` and
            ``split_seed`` for datasets without a validation folder.

    Raises:
        ValueError: unknown dataset or option, a malformed file (wrong name, shape, dtype or
            label value; the message names the file and the expected layout).
        FileNotFoundError: ``root`` or a split folder or file is missing (same message form).
    """
    spec = get_dataset_spec(name)
    resolved = dataset_options(spec, options)
    path = _root_folder(spec, root)
    try:
        read = {split: spec.read(path, folder, resolved) for split, folder in spec.folders.items()}
    except (FileNotFoundError, ValueError) as err:
        raise layout_error(spec, err) from err
    if "val" not in read:
        read["train"], read["val"] = _hold_out(read["train"], resolved, read["test"], name)
    transform = spec.train_transform(resolved) if spec.train_transform is not None else None
    if transform is not None:
        from taskbalance.data.augment import AugmentedDataset

        read["train"] = AugmentedDataset(read["train"], transform)
    return RealDataSource(spec, path, resolved, read)


def dataset_fingerprint(
    name: str, root: str | os.PathLike[str], outputs: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """What tells one copy or version of a dataset from another without reading it: the number
    of files under ``root``, their total size and a digest of every file's path relative to
    ``root``, size and modification time (whole seconds). Hidden files and folders (names
    starting with ``.``) are left out; linked folders are followed, except a link back to a
    folder it is in (a loop), and a link whose target is missing counts by its target's name
    only (neither is read; their lines are in the digest, not in the count).

    The folder's own path is not part of it: the same files moved (or copied keeping their times:
    ``cp -a``, ``rsync -a``) give the same fingerprint; a file added, removed, resized or
    rewritten gives another. ``outputs``: a run's folder; when it lies inside ``root`` (a run
    started in the dataset's folder with the default ``runs/...``), the entry of ``root`` that
    holds it is left out, since the run's own files change it.

    Raises:
        FileNotFoundError: ``root`` is not a folder (the message of :func:`load_dataset`).
    """
    path = _root_folder(get_dataset_spec(name), root)
    skip = None
    if outputs is not None:
        out, base = Path(outputs).expanduser().resolve(), path.resolve()
        if out != base and out.is_relative_to(base):
            skip = out.relative_to(base).parts[0]
    lines: list[str] = []
    files, total = _fingerprint_walk(path, "", (os.stat(path),), lines, skip)
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]
    return {"files": files, "bytes": total, "digest": digest}


def _fingerprint_walk(
    folder: Path,
    prefix: str,
    above: tuple[os.stat_result, ...],
    lines: list[str],
    skip: str | None = None,
) -> tuple[int, int]:
    """Adds a line per entry under ``folder`` to ``lines`` (paths relative to the root, which
    ``prefix`` is relative to); ``above``: ``folder`` and the folders it is in (for loops);
    ``skip``: the name of an entry of ``folder`` left out. Returns (files, bytes)."""
    files = total = 0
    try:
        with os.scandir(folder) as entries:
            names = sorted((e.name, e.is_symlink()) for e in entries if not e.name.startswith("."))
    except PermissionError:  # e.g. a disk's lost+found: not data the run can read either
        lines.append(f"{prefix}\tunreadable")
        return 0, 0
    for name, link in names:
        if name == skip:
            continue
        relative, entry = prefix + name, folder / name
        try:
            stat = os.stat(entry)
        except FileNotFoundError:  # a link to nothing, or a file deleted since the listing
            if link:
                lines.append(f"{relative}\tlink\t{os.readlink(entry)}")
            continue
        if S_ISDIR(stat.st_mode):
            if any(os.path.samestat(stat, s) for s in above):  # a link back up: a loop
                lines.append(f"{relative}\tlink\t{os.readlink(entry)}")
                continue
            more, size = _fingerprint_walk(entry, relative + "/", (*above, stat), lines)
            files, total = files + more, total + size
        else:
            lines.append(f"{relative}\t{stat.st_size}\t{int(stat.st_mtime)}")
            files, total = files + 1, total + stat.st_size
    return files, total


def _root_folder(spec: DatasetSpec, root: str | os.PathLike[str]) -> Path:
    """``root`` as a path; the layout error naming it when it is not a folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise layout_error(spec, FileNotFoundError(f"data root {str(path)!r} {what}"))
    return path


def _hold_out(train: Any, options: dict[str, Any], test: Any, name: str) -> tuple[Any, Any]:
    """``(train, val)``: a seeded ``val_fraction`` of the training folder as validation, the
    rest for training; with fraction 0 the test split validates (the published protocol)."""
    fraction = float(options["val_fraction"])
    if fraction == 0:
        return train, test
    n = len(train)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise ValueError(
            f"{name}: the training folder has {n} sample(s), too few to hold out "
            f"val_fraction={fraction:g} for validation; add samples or set val_fraction to 0"
        )
    order = np.random.default_rng(int(options["split_seed"])).permutation(n)
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    return Subset(train, train_idx), Subset(train, val_idx)
