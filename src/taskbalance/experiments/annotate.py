"""Auto-annotation: fill missing labels with confident predictions of single-task teachers.

For each chosen task, :func:`annotate`

1. trains a *teacher*: a single-task network with its own backbone (``benchmark.build_model``,
   optionally wider than the student with ``teacher_width``), on the training samples that carry
   that task's label only; the weights of its best validation epoch are kept;
2. predicts the task on the TRAINING samples that lack its label, with a confidence per label;
3. keeps the labels whose confidence reaches ``threshold`` and stores them in a
   :class:`PseudoLabelStore` (``pseudo_labels.pt``).

:class:`WithPseudoLabels` wraps a dataset so that a later training uses them: a sample without a
real label of a task gets the stored pseudo-label as target and ``mask = True``; samples with a
real label are never changed; samples whose pseudo-label was rejected stay unlabelled.

Confidence of a label, by task kind (see :data:`CONFIDENCE_RULES`):

* ``classification`` / ``event``: the largest softmax probability; a sample is kept when it
  reaches the threshold.
* ``binary``: per element ``max(p, 1 - p)`` of the sigmoid; a sample is kept when its least
  confident element reaches the threshold.
* ``segmentation``: per pixel the largest softmax probability; pixels below the threshold get the
  task's ignore index (255), the sample is kept when the fraction of kept pixels (its
  *coverage*) is at least ``min_coverage`` and above 0.
* ``depth``: *test-time flip agreement*. The teacher predicts the image and its horizontal mirror
  (mirrored back); per pixel ``c = clip(1 - |d1 - d2| / ((|d1| + |d2|) / 2), 0, 1)`` (1 = the two
  predictions agree exactly, 0.9 = they differ by 10 % of the depth). The label is the mean of
  both; pixels below the threshold (or with a predicted depth <= 0) get depth 0, the invalid mark.
* ``normal``: flip agreement as for depth, with the mirrored prediction's x component negated;
  per pixel ``c = max(0, cos(angle between n1 and n2))``; the label is the normalised mean;
  rejected pixels get the zero vector (invalid mark).
* ``ball_position``: the probability mass of each axis' softmax within ±2 bins of its argmax; the
  smaller of the two (x, y) is the confidence; the label is the argmax position (pixels).

The per-sample ``confidences`` stored are those values (mean over pixels for dense tasks).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "CONFIDENCE_RULES",
    "STORE_NAME",
    "PseudoLabelStore",
    "PseudoLabels",
    "WithPseudoLabels",
    "annotate",
    "annotate_benchmark",
    "format_summary",
    "label_mask",
    "predict_pseudo_labels",
    "train_teacher",
    "with_pseudo_labels",
]

STORE_NAME = "pseudo_labels.pt"
_FORMAT = "taskbalance.pseudo_labels"
_VERSION = 1

#: Task kind -> how the confidence of a pseudo-label is computed (stored with the labels).
CONFIDENCE_RULES: dict[str, str] = {
    "classification": "max softmax probability",
    "event": "max softmax probability",
    "binary": "min over elements of max(p, 1-p) of the sigmoid",
    "segmentation": "per-pixel max softmax probability; low pixels -> ignore index",
    "depth": "horizontal-flip agreement clip(1 - |d1-d2| / mean(|d1|,|d2|), 0, 1) per pixel",
    "normal": "horizontal-flip agreement max(0, cos(n1, n2)) per pixel",
    "ball_position": "min over x, y of the softmax mass within +-2 bins of the argmax",
}
_DENSE = ("segmentation", "depth", "normal")
_FLIP = ("depth", "normal")
_BALL_RADIUS = 2


# ---------------------------------------------------------------------------------- the store


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
        from taskbalance.training.checkpoint import save_torch_file

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
        from taskbalance.training.checkpoint import load_torch_file

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

    def __getattr__(self, name: str) -> Any:
        # Delegate what the wrapper does not define (task_names, extras, inputs, ...).
        if name in ("dataset", "store", "_rows", "_values"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

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


# ---------------------------------------------------------------------------------- teachers


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


def _single_task(model: nn.Module, task: str) -> nn.Module:
    """A one-head view of a hard-sharing model (so the teacher computes only its own head)."""
    from taskbalance.models import MultiTaskModel

    if isinstance(model, MultiTaskModel) and len(model.task_names) > 1:
        return MultiTaskModel(model.backbone, {task: model.heads[task]})
    return model


def _build_teacher(benchmark: Any, task: str, width: int | None, options: Mapping[str, Any]):
    opts = dict(options)
    if width is not None:
        opts["width"] = width
    return _single_task(benchmark.build_model(**opts), task)


def train_teacher(
    benchmark: Any,
    task: str,
    *,
    width: int | None = None,
    model_options: Mapping[str, Any] | None = None,
    epochs: int = 5,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a single-task teacher on the training samples labelled for ``task``.

    Returns the model (weights of its best validation epoch, in eval mode) and facts about it
    (``val`` metrics, ``best_epoch``, ``labelled`` sample count, ``width``, ``epochs``,
    ``seconds``).

    Raises:
        ValueError: an unknown task, or a task with no labelled training sample (nothing to learn
            from).
    """
    from taskbalance.training import Trainer, make_loaders, seed_everything

    tasks = {t.name: t for t in benchmark.tasks}
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; the benchmark's tasks are {list(tasks)}")
    labelled = label_mask(benchmark.train, task)
    count = int(labelled.sum())
    if count == 0:
        raise ValueError(
            f"task {task!r} has no labelled training sample: a teacher cannot be trained for it; "
            "give it some labels (e.g. labels={task: 0.1}) or leave it out of the annotation"
        )
    seed_everything(seed)
    model = _build_teacher(benchmark, task, width, model_options or {})
    subset = Subset(benchmark.train, torch.nonzero(labelled).flatten().tolist())
    loader, val_loader, _ = make_loaders(
        subset,
        benchmark.val,
        batch_size=min(batch_size, count),
        eval_batch_size=batch_size,
        seed=seed,
    )
    best: dict[str, Any] = {}

    def keep_best(trainer: Any, record: Mapping[str, Any]) -> None:
        if record["best_epoch"] == record["epoch"]:
            best["state"] = copy.deepcopy(trainer.model.state_dict())

    # What makes two teachers the same run: a teacher folder with another one's files is
    # refused on resume (the Trainer compares these) rather than silently mixed.
    run_config = {
        "teacher": task,
        "benchmark": getattr(benchmark, "name", None),
        "data_seed": getattr(benchmark, "seed", None),
        "params": dict(getattr(benchmark, "params", {}) or {}),
        "labelled": hashlib.sha256(labelled.numpy().tobytes()).hexdigest()[:16],
        "width": width,
        "model_options": dict(model_options or {}),
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    folder = Path(out_dir) if out_dir is not None else None
    # A teacher killed (or finished) earlier continues from its checkpoint.
    resume = folder is not None and (folder / "checkpoint.pt").is_file()
    start = time.perf_counter()
    trainer = Trainer(
        model,
        [tasks[task]],
        "ew",
        loader,
        val_loader,
        None,
        epochs=epochs,
        steps=steps,
        lr=lr,
        device=device,
        out_dir=folder,
        run_config=run_config,
        progress=False,
        tensorboard=False,
        save_best=folder is not None,
        callbacks=[keep_best] if folder is None else [],
    )
    result = trainer.fit(resume=resume)
    if folder is not None:  # best.pt outlives a kill; the in-memory copy would not
        from taskbalance.training.checkpoint import load_torch_file

        best["state"] = load_torch_file(
            folder / "best.pt",
            what="teacher weights",
            fix="delete the teacher's folder so that it is trained again",
        )
    if "state" in best:
        trainer.model.load_state_dict(best["state"])
    trainer.model.eval()
    info = {
        "labelled": count,
        "width": width,
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "val": result.val[task],
        "seconds": time.perf_counter() - start,
    }
    return trainer.model, info


# ---------------------------------------------------------------------------------- prediction


def _ball_size(task: Any) -> tuple[int, int]:
    for metric in task.metrics:
        if hasattr(metric, "width") and hasattr(metric, "height"):
            return int(metric.width), int(metric.height)
    keywords = getattr(task.loss_fn, "keywords", {}) or {}
    if "width" in keywords and "height" in keywords:
        return int(keywords["width"]), int(keywords["height"])
    raise ValueError(f"cannot tell the width and height of ball task {task.name!r}")


def _peak_mass(logits: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """Argmax bin and softmax mass within ``radius`` bins of it, per row."""
    p = logits.float().softmax(dim=1)
    peak = p.argmax(dim=1)
    bins = torch.arange(p.shape[1], device=p.device)
    near = (bins[None, :] - peak[:, None]).abs() <= radius
    return peak, (p * near).sum(dim=1)


def _flip(x: Tensor) -> Tensor:
    return x.flip(-1)


def _label_batch(
    task: Any, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(values, confidence, coverage, kept)`` of one batch (see the module docstring)."""
    kind = task.kind
    b = pred.shape[0]
    if kind in ("classification", "event"):
        conf, values = pred.float().softmax(dim=1).max(dim=1)
        return values, conf, torch.ones(b, device=pred.device), conf >= threshold
    if kind == "binary":
        p = pred.float().sigmoid()
        values = (p > 0.5).to(pred.dtype)
        conf = torch.maximum(p, 1 - p).reshape(b, -1).min(dim=1).values
        return values, conf, torch.ones(b, device=pred.device), conf >= threshold
    if kind == "ball_position":
        width, height = _ball_size(task)
        x, cx = _peak_mass(pred[:, :width], _BALL_RADIUS)
        y, cy = _peak_mass(pred[:, width : width + height], _BALL_RADIUS)
        conf = torch.minimum(cx, cy)
        values = torch.stack([x, y], dim=1).float()
        return values, conf, torch.ones(b, device=pred.device), conf >= threshold
    if kind == "segmentation":
        conf_px, values = pred.float().softmax(dim=1).max(dim=1)
        ok = conf_px >= threshold
        ignore = int(task.ignore_value if task.ignore_value is not None else 255)
        values = torch.where(ok, values, torch.full_like(values, ignore))
    elif kind == "depth":
        assert mirrored is not None
        d1, d2 = pred.float(), mirrored.float()
        scale = (d1.abs() + d2.abs()) / 2
        conf_px = (1 - (d1 - d2).abs() / scale.clamp_min(1e-6)).clamp(0, 1)
        values = (d1 + d2) / 2
        ok = (conf_px >= threshold) & (values > 0)
        values = torch.where(ok, values, torch.zeros_like(values))
    elif kind == "normal":
        assert mirrored is not None
        n1 = F.normalize(pred.float(), dim=1)
        n2 = F.normalize(mirrored.float(), dim=1)
        conf_px = (n1 * n2).sum(dim=1, keepdim=True).clamp(0, 1)
        values = F.normalize(n1 + n2, dim=1)
        ok = conf_px >= threshold
        values = torch.where(ok, values, torch.zeros_like(values))
        conf_px, ok = conf_px[:, 0], ok[:, 0]
    else:  # pragma: no cover - filtered by _check_kind
        raise AssertionError(kind)
    coverage = ok.reshape(b, -1).float().mean(dim=1)
    conf = conf_px.reshape(b, -1).mean(dim=1)
    return values, conf, coverage, coverage > 0


def _check_kind(task: Any) -> None:
    if task.kind not in CONFIDENCE_RULES:
        raise ValueError(
            f"task {task.name!r} is of kind {task.kind!r}, which auto-annotation does not support; "
            f"supported kinds: {', '.join(CONFIDENCE_RULES)}"
        )


def _smallest_int(values: Tensor) -> Tensor:
    if values.is_floating_point() or values.numel() == 0:
        return values
    lo, hi = int(values.min()), int(values.max())
    if 0 <= lo and hi <= 255:
        return values.to(torch.uint8)
    if -(2**15) <= lo and hi < 2**15:
        return values.to(torch.int16)
    return values


@torch.no_grad()
def predict_pseudo_labels(
    teacher: nn.Module,
    task: Any,
    dataset: Any,
    indices: Sequence[int],
    *,
    threshold: float,
    min_coverage: float = 0.0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> PseudoLabels:
    """Predict ``task`` on ``dataset[indices]`` and keep the confident labels (module docstring).

    Raises:
        ValueError: a task kind without a confidence rule; a threshold outside [0, 1].
    """
    _check_kind(task)
    _check_threshold(task.name, threshold)
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    indices = list(indices)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    kept_idx, kept_val, kept_conf, kept_cov = [], [], [], []
    offset = 0
    order = torch.tensor(indices, dtype=torch.long)
    for inputs, _, _ in loader:
        inputs = inputs.to(device)
        pred = teacher(inputs)[task.name]
        mirrored = None
        if task.kind in _FLIP:
            mirrored = _flip(teacher(_flip(inputs))[task.name])
            if task.kind == "normal":
                mirrored = mirrored.clone()
                mirrored[:, 0] = -mirrored[:, 0]
        values, conf, coverage, kept = _label_batch(task, pred, mirrored, threshold)
        kept = kept & (coverage >= min_coverage)
        b = inputs.shape[0]
        rows = order[offset : offset + b]
        offset += b
        keep = kept.cpu()
        kept_idx.append(rows[keep])
        kept_val.append(values[kept].cpu())
        kept_conf.append(conf[kept].float().cpu())
        kept_cov.append(coverage[kept].float().cpu())
    if kept_idx:
        idx = torch.cat(kept_idx)
        vals = torch.cat(kept_val)
        conf_t = torch.cat(kept_conf)
        cov_t = torch.cat(kept_cov)
        sort = torch.argsort(idx)
        idx, vals, conf_t, cov_t = idx[sort], vals[sort], conf_t[sort], cov_t[sort]
    else:
        idx = torch.zeros(0, dtype=torch.long)
        vals, conf_t, cov_t = torch.zeros(0), torch.zeros(0), torch.zeros(0)
    return PseudoLabels(
        task=task.name,
        kind=task.kind,
        indices=idx,
        values=_smallest_int(vals),
        confidences=conf_t,
        coverage=cov_t,
        threshold=float(threshold),
        rule=CONFIDENCE_RULES[task.kind],
        candidates=len(indices),
    )


def _check_threshold(task: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"threshold of {task!r} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"threshold of {task!r} must be in [0, 1], got {value!r}")
    return float(value)


def annotate(
    benchmark: Any,
    tasks: Sequence[str] | str | None = None,
    *,
    teacher_width: int | None = None,
    teacher_options: Mapping[str, Any] | None = None,
    epochs: int = 5,
    steps: int | None = None,
    threshold: float | Mapping[str, float] = 0.9,
    min_coverage: float = 0.0,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> PseudoLabelStore:
    """Train a teacher per task and store confident pseudo-labels of the unlabelled samples.

    Args:
        benchmark: a :class:`~taskbalance.data.Benchmark` (typically loaded with partial
            ``labels``); its ``train`` split is annotated.
        tasks: task names (or one name); default: every task with a missing label somewhere.
        teacher_width: ``width`` option of ``benchmark.build_model`` for the teachers (may be
            wider than the student's); ``teacher_options`` are further model options.
        epochs, steps, batch_size, lr, seed, device: teacher training.
        threshold: minimum confidence (see the module docstring), one value or ``{task: value}``.
        min_coverage: dense tasks: minimum fraction of a sample's pixels that must be kept.
        out_dir: if given, the store is written to ``out_dir/pseudo_labels.pt``, a summary to
            ``out_dir/annotate.json`` and each teacher's run files to ``out_dir/teachers/<task>``.
        log: receives one line per task.

    Raises:
        ValueError: an unknown task; a task without any labelled training sample; a task kind
            without a confidence rule; a threshold outside [0, 1]; no task to annotate.
    """
    names = [t.name for t in benchmark.tasks]
    by_name = {t.name: t for t in benchmark.tasks}
    if tasks is None:
        chosen = [t for t in names if not bool(label_mask(benchmark.train, t).all())]
        if not chosen:
            raise ValueError(
                "every training sample carries every label: there is nothing to annotate"
            )
    else:
        chosen = [tasks] if isinstance(tasks, str) else list(tasks)
        if not chosen:
            raise ValueError("no task to annotate: give at least one task name")
        unknown = [t for t in chosen if t not in by_name]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the benchmark's tasks are {names}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"a task is listed twice: {chosen}")
    if isinstance(threshold, Mapping):
        missing = [t for t in chosen if t not in threshold]
        if missing:
            raise ValueError(f"threshold has no value for task(s) {missing}")
        thresholds = {t: _check_threshold(t, threshold[t]) for t in chosen}
    else:
        thresholds = {t: _check_threshold(t, threshold) for t in chosen}
    if not (isinstance(min_coverage, int | float) and 0.0 <= float(min_coverage) <= 1.0):
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage!r}")
    for t in chosen:
        _check_kind(by_name[t])
        if not bool(label_mask(benchmark.train, t).any()):
            raise ValueError(
                f"task {t!r} has no labelled training sample: a teacher cannot be trained for "
                "it; give it some labels or leave it out of the annotation"
            )
    root = Path(out_dir) if out_dir is not None else None
    entries = []
    for t in chosen:
        teacher, info = train_teacher(
            benchmark,
            t,
            width=teacher_width,
            model_options=teacher_options,
            epochs=epochs,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            out_dir=None if root is None else root / "teachers" / t,
        )
        missing = torch.nonzero(~label_mask(benchmark.train, t)).flatten().tolist()
        entry = predict_pseudo_labels(
            teacher,
            by_name[t],
            benchmark.train,
            missing,
            threshold=thresholds[t],
            min_coverage=float(min_coverage),
            batch_size=batch_size,
            device=device,
        )
        entry.teacher = info
        entries.append(entry)
        if len(entry) == 0 and entry.candidates > 0:
            warnings.warn(
                f"annotate {t}: kept 0 of {entry.candidates} pseudo-labels at threshold "
                f"{entry.threshold:g}; lower the threshold (--threshold) or train the teacher "
                "longer (--epochs)",
                RuntimeWarning,
                stacklevel=2,
            )
        if log is not None:
            log(
                f"annotate {t}: teacher on {info['labelled']} labelled samples "
                f"({info['seconds']:.1f}s), kept {len(entry)}/{entry.candidates} pseudo-labels "
                f"at threshold {entry.threshold}"
            )
    meta = {
        "benchmark": {
            "name": getattr(benchmark, "name", None),
            "seed": getattr(benchmark, "seed", None),
            "params": dict(getattr(benchmark, "params", {}) or {}),
        },
        "teacher_width": teacher_width,
        "epochs": epochs,
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store = PseudoLabelStore(entries, len(benchmark.train), meta)
    if root is not None:
        store.save(root / STORE_NAME)
        from taskbalance.training.checkpoint import atomic_write_text

        atomic_write_text(
            root / "annotate.json",
            json.dumps({"meta": meta, "tasks": store.summary()}, indent=2, default=str) + "\n",
        )
    return store


def annotate_benchmark(
    name: str,
    labels: Mapping[str, float] | None,
    tasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    size: Any = "default",
    cache_dir: str | None = None,
    out_dir: str | Path = "runs/annotate",
    **options: Any,
) -> PseudoLabelStore:
    """Load benchmark ``name`` with partial ``labels`` and :func:`annotate` it (``taskbalance
    annotate``); writes ``out_dir/pseudo_labels.pt``."""
    from taskbalance.data import load_benchmark

    bench = load_benchmark(name, seed=seed, size=size, cache_dir=cache_dir, labels=labels)
    return annotate(bench, tasks, seed=seed, out_dir=out_dir, **options)


def format_summary(store: PseudoLabelStore) -> str:
    """One line per task: kept / candidates, mean confidence and coverage, teacher metric."""
    lines = []
    for task, entry in store.labels.items():
        info = entry.summary()
        conf = info["mean_confidence"]
        cov = info["mean_coverage"]
        teacher = ", ".join(f"{k} {v:.4g}" for k, v in (entry.teacher.get("val") or {}).items())
        lines.append(
            f"{task}: kept {info['kept']}/{info['candidates']} unlabelled samples "
            f"({100 * info['kept_fraction']:.1f}%) at threshold {entry.threshold:g}"
            + (f", mean confidence {conf:.3f}" if conf is not None else "")
            + (f", mean coverage {cov:.3f}" if cov is not None and entry.kind in _DENSE else "")
            + (f"; teacher val: {teacher}" if teacher else "")
        )
    return "\n".join(lines)
