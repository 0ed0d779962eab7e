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

Confidence of a label, by task kind (each :class:`~taskbalance.tasks.kinds.TaskKind` carries its
rule; :mod:`taskbalance.tasks.confidence` holds the built-in ones):

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from taskbalance.data.pseudo_labels import (
    STORE_NAME,
    PseudoLabels,
    PseudoLabelStore,
    WithPseudoLabels,
    label_mask,
    with_pseudo_labels,
)
from taskbalance.tasks.kinds import TaskKind, find_kind, get_kind, task_kinds
from taskbalance.validation import is_number

__all__ = [
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


# ---------------------------------------------------------------------------------- teachers


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


def _teacher_identity(
    benchmark: Any,
    task: str,
    labelled: Tensor,
    width: int | None,
    model_options: Mapping[str, Any] | None,
    epochs: int,
    steps: int | None,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """What makes two teachers the same run: a teacher folder with another one's files is
    refused on resume (the Trainer compares these) rather than silently mixed."""
    return {
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


def _teacher_labels(benchmark: Any, task: str) -> Tensor:
    """The mask of ``task``'s labelled training samples (some, or a ValueError)."""
    names = [t.name for t in benchmark.tasks]
    if task not in names:
        raise ValueError(f"unknown task {task!r}; the benchmark's tasks are {names}")
    labelled = label_mask(benchmark.train, task)
    if not bool(labelled.any()):
        raise ValueError(
            f"task {task!r} has no labelled training sample: a teacher cannot be trained for it; "
            "give it some labels (e.g. labels={task: 0.1}) or leave it out of the annotation"
        )
    return labelled


def _load_best(model: nn.Module, folder: Path | None, best: dict[str, Any]) -> None:
    """The best epoch's weights: from ``best.pt`` (which outlives a kill; the in-memory copy
    would not), else the copy kept by the callback."""
    if folder is not None:
        from taskbalance.fileio import load_torch_file

        best["state"] = load_torch_file(
            folder / "best.pt",
            what="teacher weights",
            fix="delete the teacher's folder so that it is trained again",
        )
    if "state" in best:
        model.load_state_dict(best["state"])


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
    """Train a single-task teacher on the training samples labelled for ``task``: one run of
    the runner (:func:`taskbalance.training.runner.run`), so a teacher killed or finished
    earlier in ``out_dir`` continues from its checkpoint.

    Returns the model (weights of its best validation epoch, in eval mode) and facts about it
    (``val`` metrics, ``best_epoch``, ``labelled`` sample count, ``width``, ``epochs``,
    ``seconds``).

    Raises:
        ValueError: an unknown task, or a task with no labelled training sample (nothing to learn
            from).
    """
    from taskbalance.training import make_loaders, seed_everything
    from taskbalance.training.runner import RunInputs, run

    tasks = {t.name: t for t in benchmark.tasks}
    labelled = _teacher_labels(benchmark, task)
    count = int(labelled.sum())
    seed_everything(seed)
    model = _build_teacher(benchmark, task, width, model_options or {})
    subset = Subset(benchmark.train, torch.nonzero(labelled).flatten().tolist())
    loaders = make_loaders(
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

    identity = _teacher_identity(
        benchmark, task, labelled, width, model_options, epochs, steps, batch_size, lr, seed
    )
    folder = Path(out_dir) if out_dir is not None else None
    config = _teacher_config(benchmark, task, epochs, steps, min(batch_size, count), lr, seed)
    config.update(device=device, out_dir=None if folder is None else str(folder))
    config.update(save_best=folder is not None, eval_batch_size=batch_size)
    start = time.perf_counter()
    inputs = RunInputs(model=model, tasks=[tasks[task]], loaders=loaders, identity=identity)
    result = run(config, inputs=inputs, callbacks=[keep_best] if folder is None else [])
    _load_best(model, folder, best)
    model.eval()
    info = {
        "labelled": count,
        "width": width,
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "val": result.val[task],
        "seconds": time.perf_counter() - start,
    }
    return model, info


def _teacher_config(
    benchmark: Any, task: str, epochs: int, steps: int | None, batch_size: int, lr: float,
    seed: int,
) -> dict[str, Any]:
    """The runner's config keys of a teacher (its data and model are handed over)."""
    from taskbalance.data import available_benchmarks

    name = getattr(benchmark, "name", None)
    return {
        "benchmark": name if name in available_benchmarks() else None,
        "method": "ew",
        "tasks": [task],
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "progress": False,
        "tensorboard": False,
    }


# ---------------------------------------------------------------------------------- prediction


def _labelling_kind(task: Any) -> TaskKind:
    """The task's kind, refused when it has no confidence rule."""
    kind = get_kind(task.kind)
    if kind.confidence is None:
        raise ValueError(
            f"task {task.name!r} is of kind {task.kind!r}, which auto-annotation does not support; "
            f"supported kinds: {', '.join(task_kinds(with_confidence=True))}"
        )
    return kind


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
    kind = _labelling_kind(task)
    assert kind.confidence is not None
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
        if kind.mirror_back is not None:  # confidence by test-time flip agreement
            mirrored = kind.mirror_back(teacher(inputs.flip(-1))[task.name])
        values, conf, coverage, kept = kind.confidence(task, pred, mirrored, threshold)
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
        rule=kind.confidence_rule,
        candidates=len(indices),
    )


def _check_threshold(task: str, value: Any) -> float:
    if not is_number(value) or not math.isfinite(value):
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
    by_name = {t.name: t for t in benchmark.tasks}
    chosen = _chosen_tasks(benchmark, tasks)
    thresholds = _thresholds(benchmark, chosen, threshold, min_coverage)
    root = _annotation_folder(out_dir)
    teacher: dict[str, Any] = {
        "width": teacher_width, "model_options": teacher_options, "epochs": epochs,
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
    }
    entries = []
    for t in chosen:
        folder = None if root is None else root / "teachers" / t
        model, info = train_teacher(benchmark, t, out_dir=folder, **teacher)
        missing = torch.nonzero(~label_mask(benchmark.train, t)).flatten().tolist()
        entry = predict_pseudo_labels(
            model,
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
        _report(t, entry, info, log)
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
        _save_store(root, store, meta)
    return store


def _annotation_folder(out_dir: str | Path | None) -> Path | None:
    """The output folder, cleared of temporaries left by an annotation killed while writing."""
    if out_dir is None:
        return None
    from taskbalance.fileio import remove_stale_temporaries

    remove_stale_temporaries(Path(out_dir))
    return Path(out_dir)


def _chosen_tasks(benchmark: Any, tasks: Sequence[str] | str | None) -> list[str]:
    """The tasks to annotate: ``tasks`` (checked), default every task missing a label."""
    names = [t.name for t in benchmark.tasks]
    if tasks is None:
        chosen = [t for t in names if not bool(label_mask(benchmark.train, t).all())]
        if not chosen:
            raise ValueError(
                "every training sample carries every label: there is nothing to annotate"
            )
        return chosen
    chosen = [tasks] if isinstance(tasks, str) else list(tasks)
    if not chosen:
        raise ValueError("no task to annotate: give at least one task name")
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the benchmark's tasks are {names}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a task is listed twice: {chosen}")
    return chosen


def _thresholds(
    benchmark: Any,
    chosen: Sequence[str],
    threshold: float | Mapping[str, float],
    min_coverage: float,
) -> dict[str, float]:
    """Each chosen task's threshold; every other argument of the annotation checked too."""
    if isinstance(threshold, Mapping):
        missing = [t for t in chosen if t not in threshold]
        if missing:
            raise ValueError(f"threshold has no value for task(s) {missing}")
        thresholds = {t: _check_threshold(t, threshold[t]) for t in chosen}
    else:
        thresholds = {t: _check_threshold(t, threshold) for t in chosen}
    if not (isinstance(min_coverage, int | float) and 0.0 <= float(min_coverage) <= 1.0):
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage!r}")
    by_name = {t.name: t for t in benchmark.tasks}
    for t in chosen:
        _labelling_kind(by_name[t])
        if not bool(label_mask(benchmark.train, t).any()):
            raise ValueError(
                f"task {t!r} has no labelled training sample: a teacher cannot be trained for "
                "it; give it some labels or leave it out of the annotation"
            )
    return thresholds


def _report(task: str, entry: Any, info: Mapping[str, Any], log: Callable[[str], None] | None):
    """A warning when no pseudo-label is kept; one log line per task."""
    if len(entry) == 0 and entry.candidates > 0:
        warnings.warn(
            f"annotate {task}: kept 0 of {entry.candidates} pseudo-labels at threshold "
            f"{entry.threshold:g}; lower the threshold (--threshold) or train the teacher "
            "longer (--epochs)",
            RuntimeWarning,
            stacklevel=3,
        )
    if log is not None:
        log(
            f"annotate {task}: teacher on {info['labelled']} labelled samples "
            f"({info['seconds']:.1f}s), kept {len(entry)}/{entry.candidates} pseudo-labels "
            f"at threshold {entry.threshold}"
        )


def _save_store(root: Path, store: PseudoLabelStore, meta: Mapping[str, Any]) -> None:
    from taskbalance.fileio import atomic_write_text

    store.save(root / STORE_NAME)
    atomic_write_text(
        root / "annotate.json",
        json.dumps({"meta": meta, "tasks": store.summary()}, indent=2, default=str) + "\n",
    )


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


def _is_dense(kind: str) -> bool:
    found = find_kind(kind)
    return found is not None and found.dense


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
            + (f", mean coverage {cov:.3f}" if cov is not None and _is_dense(entry.kind) else "")
            + (f"; teacher val: {teacher}" if teacher else "")
        )
    return "\n".join(lines)
