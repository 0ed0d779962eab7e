"""Pseudo-labels: their storage (:class:`PseudoLabelStore`) and the dataset that uses them.

``taskbalance annotate`` (:mod:`taskbalance.experiments.annotate`) fills missing labels with
confident predictions of teachers and stores them here; :class:`WithPseudoLabels` wraps a training
set so that a later run trains on them: a sample without a real label of a task gets the stored
pseudo-label as target and ``mask = True``; real labels are never changed; samples whose
pseudo-label was rejected stay unlabelled.

:class:`WithPseudoLabels` is a dataset of its own: it defines what training reads (items,
``task_names``, ``masks``, ``label_fractions``) and exposes the wrapped dataset as ``dataset``;
it does not forward other attributes, so code cannot mistake it for the dataset it wraps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from taskbalance.fileio import load_torch_file, save_torch_file

__all__ = [
    "STORE_NAME",
    "PseudoLabelStore",
    "PseudoLabels",
    "WithPseudoLabels",
    "label_mask",
    "with_pseudo_labels",
]

STORE_NAME = "pseudo_labels.pt"
_FORMAT = "taskbalance.pseudo_labels"
_VERSION = 1


@dataclass
class PseudoLabels:
    """The kept pseudo-labels of one task.

    Attributes:
        task, kind: the task and its kind.
        indices: ``int64 [K]`` training-sample indices (ascending) that received a label.
        values: ``[K, ...]`` the labels (target layout of the task; dense ones with ignore marks).
        confidences: ``float32 [K]`` per-sample confidence (mean over pixels for dense tasks).
        coverage: ``float32 [K]`` fraction of elements kept (1 for per-sample tasks).
        threshold: the confidence threshold used.
        rule: how the confidence was computed.
        candidates: number of unlabelled samples the teacher annotated (kept or not).
        teacher: facts about the teacher (validation metrics, width, epochs).
    """

    task: str
    kind: str
    indices: Tensor
    values: Tensor
    confidences: Tensor
    coverage: Tensor
    threshold: float
    rule: str
    candidates: int
    teacher: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = int(self.indices.shape[0])
        for name in ("values", "confidences", "coverage"):
            if int(getattr(self, name).shape[0]) != k:
                raise ValueError(
                    f"pseudo-labels of {self.task!r}: {name} has {getattr(self, name).shape[0]} "
                    f"rows but there are {k} indices"
                )
        if k and len(set(self.indices.tolist())) != k:
            raise ValueError(f"pseudo-labels of {self.task!r}: an index appears twice")

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "kind": self.kind,
            "indices": self.indices,
            "values": self.values,
            "confidences": self.confidences,
            "coverage": self.coverage,
            "threshold": float(self.threshold),
            "rule": self.rule,
            "candidates": int(self.candidates),
            "teacher": self.teacher,
        }

    def summary(self) -> dict[str, Any]:
        """Counts and means (plain numbers)."""
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "candidates": self.candidates,
            "kept": len(self),
            "kept_fraction": len(self) / self.candidates if self.candidates else 0.0,
            "mean_confidence": float(self.confidences.mean()) if len(self) else None,
            "mean_coverage": float(self.coverage.mean()) if len(self) else None,
            "rule": self.rule,
            "teacher": self.teacher,
        }


class PseudoLabelStore:
    """Pseudo-labels of several tasks for one training set of ``num_samples`` samples.

    Saved with :meth:`save` as a ``torch.save`` dict (loadable with ``weights_only=True``)::

        {"format": "taskbalance.pseudo_labels", "version": 1, "num_samples": N, "meta": {...},
         "tasks": {task: {"indices", "values", "confidences", "coverage", "threshold", "kind",
                          "rule", "candidates", "teacher"}}}
    """

    def __init__(
        self,
        labels: Mapping[str, PseudoLabels] | Iterable[PseudoLabels],
        num_samples: int,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        items = list(labels.values()) if isinstance(labels, Mapping) else list(labels)
        self.labels: dict[str, PseudoLabels] = {}
        for entry in items:
            if entry.task in self.labels:
                raise ValueError(f"pseudo-labels of task {entry.task!r} given twice")
            if len(entry) and (
                int(entry.indices.min()) < 0 or int(entry.indices.max()) >= num_samples
            ):
                raise ValueError(
                    f"pseudo-labels of {entry.task!r} index samples outside 0..{num_samples - 1}"
                )
            self.labels[entry.task] = entry
        self.num_samples = int(num_samples)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def __getitem__(self, task: str) -> PseudoLabels:
        if task not in self.labels:
            raise KeyError(f"no pseudo-labels for task {task!r}; the store holds {self.tasks}")
        return self.labels[task]

    def __contains__(self, task: object) -> bool:
        return task in self.labels

    def __repr__(self) -> str:
        kept = ", ".join(f"{t}: {len(e)}/{e.candidates}" for t, e in self.labels.items())
        return f"PseudoLabelStore(num_samples={self.num_samples}, {kept})"

    def summary(self) -> dict[str, Any]:
        return {t: e.summary() for t, e in self.labels.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "num_samples": self.num_samples,
            "meta": self.meta,
            "tasks": {t: e.to_dict() for t, e in self.labels.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the store (atomically, with a digest of its content); a directory ``path``
        gets ``pseudo_labels.pt``."""
        path = Path(path)
        if path.is_dir():
            path = path / STORE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_torch_file(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PseudoLabelStore:
        """Read a store written by :meth:`save` (a directory means its ``pseudo_labels.pt``)."""
        path = Path(path)
        if path.is_dir():
            path = path / STORE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no pseudo-label file {str(path)!r}; create one with taskbalance annotate"
            )
        fix = "create it again with taskbalance annotate"
        # weights_only: tensors and plain values only, so a tampered file cannot run code
        data = load_torch_file(path, what="pseudo-label file", fix=fix)
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(
                f"{str(path)!r} is not a taskbalance pseudo-label file; give the "
                f"{STORE_NAME} written by taskbalance annotate"
            )
        if data.get("version") != _VERSION:
            raise ValueError(
                f"{str(path)!r} has pseudo-label format version {data.get('version')!r}; this "
                f"taskbalance reads version {_VERSION}; {fix}"
            )
        try:
            tasks, num_samples = data["tasks"], data["num_samples"]
            if not isinstance(tasks, Mapping) or isinstance(num_samples, bool):
                raise TypeError("bad layout")
            entries = []
            for entry in tasks.values():
                entry = dict(entry)
                for key in ("indices", "values", "confidences", "coverage"):
                    if not isinstance(entry.get(key), Tensor):
                        raise TypeError(f"{key} is not a tensor")
                entries.append(PseudoLabels(**entry))
            return cls(entries, int(num_samples), data.get("meta"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            text = " ".join(str(err).split())
            raise ValueError(
                f"pseudo-label file {str(path)!r} is damaged ({text}); {fix}"
            ) from None

    def check_benchmark(self, benchmark: Any) -> None:
        """``ValueError`` when the store was made for another benchmark, seed or size."""
        meta = self.meta.get("benchmark") or {}
        for key, mine in (("name", benchmark.name), ("seed", benchmark.seed)):
            if key in meta and meta[key] != mine:
                raise ValueError(
                    f"the pseudo-labels were made for benchmark {key} {meta[key]!r}, not "
                    f"{mine!r}; annotate this benchmark instead"
                )
        if len(benchmark.train) != self.num_samples:
            raise ValueError(
                f"the pseudo-labels are for {self.num_samples} training samples but the "
                f"benchmark has {len(benchmark.train)}; was it generated with another size?"
            )


# ---------------------------------------------------------------------------------- dataset


class WithPseudoLabels(Dataset):
    """``dataset`` with the missing labels filled from ``store`` where a pseudo-label was kept.

    Item ``i`` is ``dataset[i]`` with, for every task of the store whose real label is missing
    (``masks[task]`` False) and for which sample ``i`` has a pseudo-label: ``targets[task]`` = the
    pseudo-label (cast to the target's dtype) and ``masks[task] = True``. Real labels are never
    replaced; samples without a kept pseudo-label are unchanged.

    Args:
        dataset: a dataset of ``(inputs, targets, masks)`` items, the one the store was made for.
        store: a :class:`PseudoLabelStore` (or the path of one).
        tasks: only these tasks of the store (default: all).
        min_confidence: additionally drop pseudo-labels whose stored confidence is lower.

    Raises:
        ValueError: the store is for a dataset of another length; a task the dataset does not
            have; pseudo-labels whose shape does not match the dataset's targets.
    """

    def __init__(
        self,
        dataset: Dataset,
        store: PseudoLabelStore | str | Path,
        *,
        tasks: Sequence[str] | None = None,
        min_confidence: float | None = None,
    ) -> None:
        if not isinstance(store, PseudoLabelStore):
            store = PseudoLabelStore.load(store)
        n = len(dataset)  # type: ignore[arg-type]
        if n != store.num_samples:
            raise ValueError(
                f"the pseudo-labels are for {store.num_samples} samples but the dataset has {n}; "
                "use the training split the labels were made for"
            )
        names = store.tasks if tasks is None else list(tasks)
        for t in names:
            store[t]  # KeyError naming the tasks if missing
        self.dataset = dataset
        self.store = store
        self._rows: dict[str, Tensor] = {}
        self._values: dict[str, Tensor] = {}
        if n == 0:
            return
        _, targets, _ = dataset[0]
        for t in names:
            entry = store[t]
            if t not in targets:
                raise ValueError(f"the dataset has no task {t!r}; its tasks are {list(targets)}")
            keep = torch.ones(len(entry), dtype=torch.bool)
            if min_confidence is not None:
                keep = entry.confidences >= float(min_confidence)
            rows = torch.full((n,), -1, dtype=torch.long)
            rows[entry.indices[keep]] = torch.arange(int(keep.sum()))
            values = entry.values[keep]
            if len(values) and tuple(values.shape[1:]) != tuple(targets[t].shape):
                raise ValueError(
                    f"pseudo-labels of {t!r} have shape {list(values.shape[1:])} per sample but "
                    f"the dataset's targets have {list(targets[t].shape)}"
                )
            self._rows[t] = rows
            self._values[t] = values

    @property
    def tasks(self) -> list[str]:
        """Tasks that receive pseudo-labels."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        inputs, targets, masks = self.dataset[index]
        targets, masks = dict(targets), dict(masks)
        for task, rows in self._rows.items():
            row = int(rows[index])
            if row < 0 or bool(masks[task]):
                continue
            targets[task] = self._values[task][row].to(targets[task].dtype)
            masks[task] = torch.ones((), dtype=torch.bool)
        return inputs, targets, masks

    @property
    def task_names(self) -> list[str]:
        """Names of the wrapped dataset's tasks (every task, pseudo-labelled or not)."""
        names = getattr(self.dataset, "task_names", None)
        if names is not None:
            return list(names)
        return list(self.dataset[0][1]) if len(self) else []

    def pseudo_masks(self) -> dict[str, Tensor]:
        """Task -> ``bool [N]``: samples whose target is a pseudo-label in this dataset."""
        real = {t: label_mask(self.dataset, t) for t in self._rows}
        return {t: (rows >= 0) & ~real[t] for t, rows in self._rows.items()}

    @property
    def masks(self) -> dict[str, Tensor]:
        """Task -> ``bool [N]``: real or pseudo label present (what training sees)."""
        base = getattr(self.dataset, "masks", None)
        if base is None:
            raise AttributeError("the wrapped dataset has no masks attribute")
        out = dict(base)
        for t, pseudo in self.pseudo_masks().items():
            out[t] = out[t] | pseudo
        return out

    def label_fractions(self) -> dict[str, float]:
        """Fraction of samples labelled (real or pseudo), per task."""
        return {t: float(m.float().mean()) if len(m) else 0.0 for t, m in self.masks.items()}


def with_pseudo_labels(benchmark: Any, store: PseudoLabelStore | str | Path, **options: Any):
    """A shallow copy of ``benchmark`` whose ``train`` split is wrapped in
    :class:`WithPseudoLabels` (validation and test unchanged). Checks that the store was made for
    this benchmark (name, seed, number of training samples)."""
    if not isinstance(store, PseudoLabelStore):
        store = PseudoLabelStore.load(store)
    store.check_benchmark(benchmark)
    out = copy.copy(benchmark)
    out.train = WithPseudoLabels(benchmark.train, store, **options)
    return out


def label_mask(dataset: Any, task: str) -> Tensor:
    """``bool [N]``: samples of ``dataset`` that carry a real label of ``task``."""
    masks = getattr(dataset, "masks", None)
    if isinstance(dataset, WithPseudoLabels):
        masks = getattr(dataset.dataset, "masks", None)
        if masks is None:
            return torch.tensor([bool(dataset.dataset[i][2][task]) for i in range(len(dataset))])
    if isinstance(masks, Mapping) and task in masks:
        return masks[task].to(torch.bool).clone()
    return torch.tensor([bool(dataset[i][2][task]) for i in range(len(dataset))], dtype=torch.bool)
