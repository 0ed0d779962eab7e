"""Workflows for partially labelled data, and their comparison against full labels.

Three ways to train when not every training sample carries every label:

* ``masked``: ordinary multi-task training; a task's loss is averaged over the samples of the
  batch that carry its label (``Task.loss`` returns ``None`` when none does and the Balancer drops
  the task for that step);
* ``staged``: :func:`~taskbalance.experiments.staged.default_schedule`: the backbone with the
  best-labelled tasks first, then the other tasks with a frozen backbone (optionally fine-tuning
  rounds of everything);
* ``annotated``: :func:`~taskbalance.experiments.annotate.annotate` trains a single-task teacher
  per partially labelled task, fills the missing labels with its confident predictions, then
  masked training on real + pseudo labels.

:func:`compare_workflows` trains each of them and a fully labelled ``reference`` (masked training
on the complete labels, same settings) and reports every task's metrics and Δm% of each workflow
against the reference, on the test split. So that all workflows are measured alike (a staged run
has no single "best epoch"), the metrics are those of the model at the END of training, for every
workflow and the reference; validation is not used to pick epochs here.

Helpers for the command line: :func:`parse_labels` (``"depth=0.2,seg=0.5"``) and
:func:`parse_workflows` (``"masked,staged,annotated"``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from taskbalance.validation import is_number

from .records import WorkflowRow, WorkflowRun

__all__ = [
    "REFERENCE",
    "WORKFLOWS",
    "WorkflowComparison",
    "WorkflowRow",
    "compare_workflows",
    "make_loaders",
    "labels_argument",
    "parse_labels",
    "parse_workflows",
    "workflows_argument",
    "train_masked",
    "train_staged",
    "workflow_table",
]

WORKFLOWS = ("masked", "staged", "annotated")
#: Name of the fully labelled reference run in the reports.
REFERENCE = "full labels"

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------- parsing


def parse_labels(text: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """``"depth=0.2,segmentation=0.5"`` -> ``{"depth": 0.2, "segmentation": 0.5}``.

    Percentages are accepted (``depth=20%``). ``None``, ``""`` and ``"none"`` give ``None`` (every
    label kept); a mapping is validated and returned as a dict.

    Raises:
        ValueError: an entry that is not ``TASK=FRACTION``, a task given twice, a fraction that is
            not a number in (0, 1].
    """
    if text is None:
        return None
    items: list[tuple[str, Any]]
    if isinstance(text, Mapping):
        items = [(str(k), v) for k, v in text.items()]
    else:
        if not isinstance(text, str):
            raise ValueError(f"labels must be a string like 'depth=0.2,seg=0.5', got {text!r}")
        if text.strip().lower() in ("", "none", "all"):
            return None
        items = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            task, sep, raw = part.partition("=")
            task, raw = task.strip(), raw.strip()
            if not sep or not task or not raw:
                raise ValueError(
                    f"bad labels entry {part!r}: expected TASK=FRACTION, e.g. 'depth=0.2'"
                )
            items.append((task, raw))
    out: dict[str, float] = {}
    for task, raw in items:
        if task in out:
            raise ValueError(f"labels: task {task!r} is given twice")
        value: Any = raw
        if isinstance(raw, str):
            percent = raw.endswith("%")
            try:
                value = float(raw[:-1] if percent else raw)
            except ValueError:
                raise ValueError(
                    f"labels: the fraction of {task!r} must be a number in (0, 1], got {raw!r}"
                ) from None
            if percent:
                value /= 100.0
        if not is_number(value):
            raise ValueError(f"labels: the fraction of {task!r} must be a number, got {raw!r}")
        value = float(value)
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(
                f"labels: the fraction of {task!r} must be in (0, 1] (0.2 = 20 % of the training "
                f"samples keep their label), got {raw!r}"
            )
        out[task] = value
    if not out:
        return None
    return out


def parse_workflows(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"masked,staged,annotated"`` (or a list) -> a tuple of workflow names; ``None`` or
    ``"all"`` gives every workflow.

    Raises:
        ValueError: an unknown or repeated workflow, or none.
    """
    if text is None:
        return WORKFLOWS
    if isinstance(text, str):
        if text.strip().lower() == "all":
            return WORKFLOWS
        names = [p.strip() for p in text.split(",") if p.strip()]
    else:
        names = [str(p).strip() for p in text]
    if not names:
        raise ValueError(f"no workflow given; choose among {', '.join(WORKFLOWS)}")
    unknown = [n for n in names if n not in WORKFLOWS]
    if unknown:
        raise ValueError(
            f"unknown workflow(s) {unknown}; valid workflows: {', '.join(WORKFLOWS)} (or 'all')"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"a workflow is listed twice: {names}")
    return tuple(names)


def labels_argument(text: str) -> dict[str, float]:
    """argparse ``type=`` for ``--labels TASK=FRACTION,...`` (the error names the bad entry)."""
    import argparse

    try:
        labels = parse_labels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if labels is None:
        raise argparse.ArgumentTypeError("expected TASK=FRACTION[,TASK=FRACTION...]")
    return labels


def workflows_argument(text: str) -> tuple[str, ...]:
    """argparse ``type=`` for ``--workflows masked,staged,annotated``."""
    import argparse

    try:
        return parse_workflows(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ---------------------------------------------------------------------------------- training


def make_loaders(
    train: Any, val: Any, test: Any, *, batch_size: int = 64, seed: int = 0
) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Loaders as :func:`taskbalance.training.train` builds them
    (:func:`taskbalance.training.make_loaders`): a seeded shuffled train loader (a last batch of
    one sample dropped, for BatchNorm), unshuffled validation and test."""
    from taskbalance.training import make_loaders as build

    train_loader, val_loader, test_loader = build(
        train, val, test, batch_size=batch_size, seed=seed
    )
    assert val_loader is not None
    return train_loader, val_loader, test_loader


def _model_and_loaders(
    benchmark: Any,
    train_set: Any,
    *,
    seed: int,
    batch_size: int,
    model_options: Mapping[str, Any] | None,
) -> tuple[Any, tuple[DataLoader, DataLoader, DataLoader | None]]:
    """Seed everything, build ``benchmark``'s default model and the run's loaders."""
    from taskbalance.training import seed_everything

    seed_everything(seed)
    model = benchmark.build_model(**dict(model_options or {}))
    loaders = make_loaders(
        train_set, benchmark.val, benchmark.test, batch_size=batch_size, seed=seed
    )
    return model, loaders


def _final(history: Sequence[Mapping[str, Any]]) -> tuple[dict, dict | None]:
    last = history[-1]
    return last["val"], last.get("test")


def train_masked(
    benchmark: Any,
    train_set: Any | None = None,
    *,
    method: str = "ew",
    method_options: Mapping[str, Any] | None = None,
    epochs: int = 3,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    model_options: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> WorkflowRun:
    """Masked multi-task training of ``benchmark``'s default model on ``train_set`` (default
    ``benchmark.train``): one run of the runner (:func:`taskbalance.training.runner.run`).
    Returns its :class:`~.records.WorkflowRun` (metrics after the last epoch).

    With ``out_dir`` holding a checkpoint (a run killed or finished earlier), training continues
    from it exactly; ``run_config`` names the run (a checkpoint of another config is refused).
    """
    from taskbalance.training.runner import RunInputs, run

    data = benchmark if train_set is None else _with_train(benchmark, train_set)
    config = {
        "benchmark": _registered(benchmark),
        "method": method,
        "method_options": dict(method_options or {}),
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": device,
        "model_options": dict(model_options or {}),
        "out_dir": None if out_dir is None else str(out_dir),
        "progress": False,
        "tensorboard": False,
        "save_best": False,
    }
    start = time.perf_counter()
    result = run(config, inputs=RunInputs(benchmark=data, identity=dict(run_config or {})))
    val, test = _final(result.history)
    seconds = time.perf_counter() - start
    return WorkflowRun(val, test, seconds, result.history, best_epoch=result.best_epoch)


def train_staged(
    benchmark: Any,
    *,
    method: str = "ew",
    method_options: Mapping[str, Any] | None = None,
    epochs: int = 3,
    rest_epochs: int | None = None,
    finetune_rounds: int = 0,
    finetune_epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    model_options: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    log: Log | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> WorkflowRun:
    """The default staged schedule (:func:`~.staged.default_schedule`) on ``benchmark``; each
    stage continues from its checkpoint in ``out_dir`` when it has one (see
    :func:`~.staged.run_stages`)."""
    from .staged import default_schedule, run_stages

    fractions = benchmark.train.label_fractions()
    schedule = default_schedule(
        fractions,
        epochs=epochs,
        rest_epochs=rest_epochs,
        finetune_rounds=finetune_rounds,
        finetune_epochs=finetune_epochs,
        lr=lr,
    )
    model, loaders = _model_and_loaders(
        benchmark, benchmark.train, seed=seed, batch_size=batch_size, model_options=model_options
    )
    result = run_stages(
        model,
        benchmark.tasks,
        schedule,
        *loaders,
        method=method,
        method_options=method_options,
        lr=lr,
        steps=steps,
        device=device,
        out_dir=out_dir,
        log=log,
        resume=True,
        run_config=run_config,
    )
    schedule_dicts = [s.to_dict() for s in schedule]
    return WorkflowRun(
        result.val, result.test, result.seconds, result.history, schedule=schedule_dicts
    )


# ---------------------------------------------------------------------------------- comparison


@dataclass
class WorkflowComparison:
    """What :func:`compare_workflows` produced (``rows[0]`` is the reference);
    :meth:`load` reads it back from its folder."""

    rows: list[WorkflowRow]
    markdown: str
    out_dir: Path | None
    seconds: float
    labels: dict[str, float]

    def row(self, workflow: str) -> WorkflowRow:
        """The row of ``workflow`` (``KeyError`` naming the workflows there are)."""
        for row in self.rows:
            if row.workflow == workflow:
                return row
        raise KeyError(f"no workflow {workflow!r}; have {[r.workflow for r in self.rows]}")

    @classmethod
    def load(cls, out_dir: str | Path) -> WorkflowComparison:
        """The comparison in ``out_dir`` (its ``results.json`` and ``workflows.md``)."""
        folder = Path(out_dir)
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        return cls(
            rows=[WorkflowRow.from_json(r) for r in data["rows"]],
            markdown=(folder / "workflows.md").read_text(encoding="utf-8"),
            out_dir=folder,
            seconds=data["seconds"],
            labels=dict(data["labels"]),
        )


def _deltas(
    metrics: Mapping[str, Mapping[str, float]],
    reference: Mapping[str, Mapping[str, float]],
    tasks: Sequence[Any],
) -> tuple[float | None, dict[str, float | None], dict[str, str]]:
    """Δm% over every metric of every task (and per task) against ``reference``, by the one
    definition (:func:`taskbalance.tasks.task_delta`); also the metrics its rule leaves out
    (metric -> reason)."""
    from taskbalance.tasks import task_delta

    out = task_delta(metrics, reference, {t.name: dict(t.higher_is_better) for t in tasks})
    overall = None if not out.changes else float(out.overall)
    return overall, dict(out.per_task), dict(out.excluded)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def workflow_table(
    rows: Sequence[WorkflowRow | Mapping[str, Any]],
    tasks: Sequence[Any],
    *,
    title: str | None = None,
    split: str = "test",
) -> str:
    """Markdown table: one row per run, EVERY metric of every task (those left out of Δm marked
    and named below), each task's Δ% (the mean of its metrics that enter) and Δm%. ``rows``
    may also be :meth:`WorkflowRow.to_json` dicts."""
    from taskbalance.tasks import DELTA_RULE

    from .tables import markdown_table

    typed = [r if isinstance(r, WorkflowRow) else WorkflowRow.from_json(r) for r in rows]
    excluded: dict[str, str] = {}
    for row in typed:
        excluded.update(row.delta_skipped or {})
    lines = []
    if title:
        lines += [f"### {title}", ""]
    head = ["workflow"]
    for t in tasks:
        for m, higher in t.higher_is_better.items():
            arrow = "↑" if higher else "↓"
            mark = "°" if f"{t.name}/{m}" in excluded else ""
            head.append(f"{t.name} {m} {arrow}{mark}")
    head += [f"Δ {t.name} %" for t in tasks]
    head += ["Δm% ↓", "time s"]
    body = []
    for row in typed:
        metrics = getattr(row, split)
        cells = [row.workflow]
        cells += [_fmt(metrics[t.name][m]) for t in tasks for m in t.higher_is_better]
        per_task = row.delta_per_task or {}
        cells += [_signed(per_task.get(t.name)) for t in tasks]
        cells += [_signed(row.delta_m), f"{row.seconds:.0f}"]
        body.append(cells)
    lines += markdown_table(head, body, align=["left"] + ["right"] * (len(head) - 1))
    lines.append("")
    lines.append(
        f"Δ: relative change in % against the first row ({REFERENCE}), sign-flipped for ↑ metrics "
        "(negative = better); Δ task = mean over that task's metrics in the table that enter Δm; "
        f"Δm = mean over all of them. Rule: {DELTA_RULE}. The reference trains with the same "
        "budget as the workflows: short budgets leave it far from converged, and relative "
        "changes against it are then rough."
    )
    if excluded:
        shown = "; ".join(f"{m} ({why})" for m, why in excluded.items())
        lines.append(f"° not in Δm: {shown}.")
    lines.append("")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.2f}"


def compare_workflows(
    benchmark: Any,
    labels: Mapping[str, float] | str,
    workflows: Sequence[str] | str = WORKFLOWS,
    *,
    epochs: int = 3,
    steps: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    size: Any = "default",
    cache_dir: str | None = None,
    method: str = "ew",
    method_options: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    device: str = "cpu",
    finetune_rounds: int = 0,
    teacher_epochs: int | None = None,
    teacher_width: int | None = None,
    threshold: float | Mapping[str, float] = 0.9,
    log: Log | None = print,
) -> WorkflowComparison:
    """Train each workflow on partially labelled data and a fully labelled reference; report.

    Args:
        benchmark: a benchmark name (loaded with ``seed``, ``size``, ``cache_dir``) or a FULLY
            labelled :class:`~taskbalance.data.Benchmark`.
        labels: ``{task: fraction}`` (or ``"depth=0.2"``) of training samples that keep their
            label in the workflows (subsets drawn by
            :func:`~taskbalance.data.partial.apply_partial_labels` with the benchmark's seed).
        workflows: among ``masked``, ``staged``, ``annotated``.
        epochs, steps, batch_size, lr, method, device: every run's training (a staged run trains
            ``epochs`` per stage; see :func:`train_staged`).
        method_options: ``taskbalance.create``'s options of ``method`` (a method sampling three
            sub-batches a step is refused: the batches are partially labelled).
        finetune_rounds: fine-tuning rounds appended to the staged schedule.
        teacher_epochs: epochs of each annotation teacher (default: ``epochs`` divided by the
            smallest label fraction, at most ``5 * epochs``: about as many steps as a full run,
            since a teacher sees only the labelled samples).
        teacher_width, threshold: see :func:`~taskbalance.experiments.annotate.annotate`.
        out_dir: if given: ``runs/<workflow>/`` per run, ``pseudo_labels.pt`` of the annotated
            workflow, ``workflows.md`` (the table) and ``results.json``.
        log: receives progress lines (``None``: silent).

    Returns:
        :class:`WorkflowComparison`; ``rows[0]`` is the reference.

    Raises:
        ValueError: unknown workflow, bad labels (unknown task, fraction outside (0, 1]), a
            ``labels`` that removes no label at all.
    """
    start = time.perf_counter()
    say = log or (lambda _msg: None)
    names = parse_workflows(workflows)
    bench, partial, fractions = _benchmark_and_labels(benchmark, labels, seed, size, cache_dir)
    common: dict[str, Any] = dict(
        method=method, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        device=device, **({"method_options": dict(method_options)} if method_options else {}),
    )  # method_options only when given; in every run's identity: other options, other runs
    _check_method(method, common.get("method_options", {}), bench, fractions)
    say(
        f"workflows on {bench.name} ({len(bench.train)} training samples), labels {fractions}: "
        f"{', '.join(names)} + the fully labelled reference"
    )
    root = Path(out_dir) if out_dir is not None else None
    plan = _Plan(bench, partial, fractions, common, root, log)
    extra: dict[str, Any] = {}
    teachers = (teacher_epochs, teacher_width, threshold)
    runs = plan.run_all(names, say, finetune_rounds, *teachers, extra)
    rows = _rows(runs, bench.tasks)
    title = _title(bench.name, fractions, common)
    markdown = workflow_table(rows, bench.tasks, title=title)
    seconds = time.perf_counter() - start
    if root is not None:
        settings = {**common, "finetune_rounds": finetune_rounds, "threshold": threshold}
        payload = {"benchmark": bench.name, "labels": fractions, "workflows": list(names)}
        _write(root, markdown, {**payload, **_results(settings, rows, seconds), **extra})
    return WorkflowComparison(rows, markdown, root, seconds, dict(fractions))


def _title(name: str, fractions: Mapping[str, float], common: Mapping[str, Any]) -> str:
    steps = common["steps"]
    options = common.get("method_options") or {}
    return (
        f"{name}: labels {', '.join(f'{t}={f:g}' for t, f in fractions.items())}, "
        f"{common['epochs']} epoch(s){'' if steps is None else f' x {steps} steps'}, method "
        + " ".join([common["method"], *(f"{k}={v!r}" for k, v in options.items())])
        + "; test metrics after the last epoch, Δ against full labels"
    )


def _check_method(
    method: str, options: Mapping[str, Any], bench: Any, fractions: Mapping[str, float]
) -> None:
    """``method`` created with ``options`` before anything trains (a bad option fails now); a
    method sampling three sub-batches a step is refused: the workflows' batches are partially
    labelled, so the parts of one label different tasks."""
    import taskbalance
    from taskbalance.balancing.independent_step import single_sampling_error

    try:
        created = taskbalance.create(method, len(bench.tasks), **options)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"method {method!r} with options {given or 'none'}: {err}") from None
    if getattr(created, "independent_batches", 1) > 1:
        partial = sorted(t for t, f in fractions.items() if f < 1)
        raise single_sampling_error(
            method,
            "needs every part of a batch to label the same tasks; the workflows train on "
            f"partial labels of {partial}, which differ from batch to batch",
            command="compare --labels",
        )


def _benchmark_and_labels(
    benchmark: Any, labels: Mapping[str, float] | str, seed: int, size: Any, cache_dir: Any
) -> tuple[Any, Any, dict[str, float]]:
    """The fully labelled benchmark, its partially labelled copy and the validated label
    fractions (some below 1)."""
    from taskbalance.data import load_benchmark
    from taskbalance.data.partial import apply_partial_labels, validate_fractions

    fractions = parse_labels(labels)
    if not fractions:
        raise ValueError(
            "labels must make some task partially labelled, e.g. {'depth': 0.2}; with every "
            "label kept the workflows are all the same training"
        )
    if isinstance(benchmark, str):
        bench = load_benchmark(benchmark, seed=seed, size=size, cache_dir=cache_dir)
    else:
        bench = benchmark
    fractions = validate_fractions(fractions, bench.task_names)
    if all(v >= 1.0 for v in fractions.values()):
        raise ValueError(f"labels {fractions} keep every label; give a fraction below 1")
    partial = _with_train(bench, apply_partial_labels(bench.train, fractions, seed=bench.seed))
    return bench, partial, dict(fractions)


@dataclass
class _Plan:
    """The runs of one workflow comparison: where each writes and what names it (a rerun into
    the same folder continues the runs whose checkpoint holds the same config, and refuses a
    folder of other settings, naming --overwrite)."""

    bench: Any
    partial: Any
    fractions: dict[str, float]
    common: dict[str, Any]
    root: Path | None
    log: Log | None

    def run_all(
        self,
        names: Sequence[str],
        say: Callable[[str], None],
        finetune_rounds: int,
        teacher_epochs: int | None,
        teacher_width: int | None,
        threshold: float | Mapping[str, float],
        extra: dict[str, Any],
    ) -> dict[str, WorkflowRun]:
        """The reference, then each workflow, in order (``extra`` gets the annotation facts)."""
        runs = {REFERENCE: self.masked(self.bench, REFERENCE, "full")}
        say(f"{REFERENCE}: {runs[REFERENCE].seconds:.1f}s")
        for name in names:
            if name == "masked":
                runs[name] = self.masked(self.partial, name, name)
            elif name == "staged":
                runs[name] = self.staged(finetune_rounds)
            else:
                runs[name] = self.annotated(teacher_epochs, teacher_width, threshold, extra)
            say(f"{name}: {runs[name].seconds:.1f}s")
        return runs

    def run_dir(self, name: str) -> Path | None:
        return None if self.root is None else self.root / "runs" / name

    def identity(self, name: str, **more: Any) -> dict[str, Any]:
        return {
            "workflow": name,
            "benchmark": self.bench.name,
            "data_seed": getattr(self.bench, "seed", None),
            "labels": None if name == REFERENCE else dict(self.fractions),
            **self.common,
            **more,
        }

    def masked(self, data: Any, name: str, folder: str, **more: Any) -> WorkflowRun:
        return train_masked(
            data,
            **self.common,
            out_dir=self.run_dir(folder),
            run_config=self.identity(name, **more),
        )

    def staged(self, finetune_rounds: int) -> WorkflowRun:
        return train_staged(
            self.partial,
            **self.common,
            finetune_rounds=finetune_rounds,
            out_dir=self.run_dir("staged"),
            log=self.log,
            run_config=self.identity("staged", finetune_rounds=finetune_rounds),
        )

    def annotated(
        self,
        teacher_epochs: int | None,
        teacher_width: int | None,
        threshold: float | Mapping[str, float],
        extra: dict[str, Any],
    ) -> WorkflowRun:
        """Teachers annotate the missing labels, then masked training on the filled data."""
        from taskbalance.data.pseudo_labels import STORE_NAME, WithPseudoLabels

        from .annotate import annotate

        t0 = time.perf_counter()
        epochs, fractions = self.common["epochs"], self.fractions
        partial_tasks = [t for t, f in fractions.items() if f < 1.0]
        smallest = min(fractions[t] for t in partial_tasks)
        t_epochs = teacher_epochs or max(1, min(5 * epochs, round(epochs / smallest)))
        options = {k: self.common[k] for k in ("steps", "batch_size", "lr", "seed", "device")}
        store = annotate(
            self.partial,
            partial_tasks,
            teacher_width=teacher_width,
            epochs=t_epochs,
            threshold=threshold,
            out_dir=self.run_dir("annotated"),
            log=self.log,
            **options,
        )
        annotated = _with_train(self.partial, WithPseudoLabels(self.partial.train, store))
        run = self.masked(
            annotated,
            "annotated",
            "annotated",
            teacher_epochs=t_epochs,
            teacher_width=teacher_width,
            threshold=threshold,
        )
        run = replace(run, seconds=time.perf_counter() - t0)
        extra["annotation"] = store.summary()
        extra["label_fractions_after_annotation"] = annotated.train.label_fractions()
        if self.root is not None:
            extra["pseudo_labels"] = str(self.root / "runs" / "annotated" / STORE_NAME)
        return run


def _rows(runs: Mapping[str, WorkflowRun], tasks: Sequence[Any]) -> list[WorkflowRow]:
    """One row per run: metrics and Δ against the reference (the first run)."""
    reference = runs[REFERENCE]
    rows = []
    for name, run in runs.items():
        assert run.test is not None and reference.test is not None  # benchmarks have a test split
        overall, per_task, skipped = _deltas(run.test, reference.test, tasks)
        val_overall, _, _ = _deltas(run.val, reference.val, tasks)
        rows.append(
            WorkflowRow(
                workflow=name,
                test=run.test,
                val=run.val,
                delta_m=overall,
                delta_per_task=per_task,
                delta_m_val=val_overall,
                delta_skipped=skipped,
                seconds=run.seconds,
            )
        )
    return rows


def _results(
    settings: Mapping[str, Any], rows: list[WorkflowRow], seconds: float
) -> dict[str, Any]:
    return {
        "reference": REFERENCE,
        "settings": dict(settings),
        "selection": "metrics after the last epoch of every run (no epoch selection)",
        "rows": [row.to_json() for row in rows],
        "seconds": seconds,
    }


def _write(root: Path, markdown: str, payload: Mapping[str, Any]) -> None:
    from taskbalance.fileio import atomic_write_text

    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "workflows.md", markdown)
    atomic_write_text(root / "results.json", json.dumps(payload, indent=2, default=str) + "\n")


def _registered(benchmark: Any) -> str | None:
    """The benchmark's name when it is a built-in one (recorded in the run's config)."""
    from taskbalance.data import available_benchmarks

    name = getattr(benchmark, "name", None)
    return name if name in available_benchmarks() else None


def _with_train(benchmark: Any, train: Any) -> Any:
    import copy

    out = copy.copy(benchmark)
    out.train = train
    return out
