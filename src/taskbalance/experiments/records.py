"""Typed records of the experiments' results: one run of a comparison (:class:`RunSummary`), one
training of a workflow (:class:`WorkflowRun`) and one row of a workflow comparison
(:class:`WorkflowRow`).

Each is a frozen dataclass with ``to_json()`` (the plain dict written to ``results.json``, key for
key what earlier versions wrote) and ``from_json()`` (which reads those files back), so the
files keep their content and the code gets attributes instead of string keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metrics", "RunSummary", "WorkflowRow", "WorkflowRun"]

#: ``{task: {metric: value}}``
Metrics = dict[str, dict[str, float]]


@dataclass(frozen=True)
class RunSummary:
    """One training run of a comparison: what the leaderboard and ``results.json`` keep of it.

    Attributes:
        method: the balancing method (``"ew"`` for a single-task baseline).
        seed: the run's seed.
        task: the task of a single-task baseline (``None`` for a method's run).
        best_epoch, val, test, seconds_per_step, num_parameters: from the run's
            ``results.json`` (:class:`~taskbalance.training.RunResult`).
        out_dir: the run's folder.
    """

    method: str
    seed: int
    best_epoch: int
    val: Metrics
    test: Metrics | None
    seconds_per_step: float
    num_parameters: int
    task: str | None = None
    out_dir: str | None = None

    @classmethod
    def from_run(
        cls, run: Mapping[str, Any], *, method: str, seed: int, task: str | None = None
    ) -> RunSummary:
        """The summary of one run's ``results.json`` content."""
        return cls(
            method=method,
            seed=seed,
            task=task,
            best_epoch=run["best_epoch"],
            val=run["val"],
            test=run.get("test"),
            seconds_per_step=run["seconds_per_step"],
            num_parameters=run["num_parameters"],
            out_dir=(run.get("config") or {}).get("out_dir"),
        )

    def to_json(self) -> dict[str, Any]:
        """The plain dict of ``results.json`` (``task`` and ``out_dir`` only when set)."""
        out: dict[str, Any] = {"method": self.method, "seed": self.seed}
        if self.task is not None:
            out["task"] = self.task
        out.update(
            best_epoch=self.best_epoch,
            val=self.val,
            test=self.test,
            seconds_per_step=self.seconds_per_step,
            num_parameters=self.num_parameters,
        )
        if self.out_dir is not None:
            out["out_dir"] = self.out_dir
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class WorkflowRow:
    """One run of a workflow comparison against the fully labelled reference.

    Attributes:
        workflow: ``"full labels"`` (the reference), ``"masked"``, ``"staged"`` or
            ``"annotated"``.
        test, val: every task's metrics after the last epoch.
        delta_m: Δm% on test against the reference (``None`` when no metric enters);
            ``delta_m_val`` the same on validation.
        delta_per_task: each task's Δ% (``None`` for a task with no metric that enters).
        delta_skipped: metrics left out of Δm -> why.
        seconds: wall time of the workflow (its teachers included).
    """

    workflow: str
    test: Metrics
    delta_m: float | None
    delta_per_task: dict[str, float | None]
    val: Metrics = field(default_factory=dict)
    delta_m_val: float | None = None
    delta_skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The plain dict of ``results.json``."""
        return {
            "workflow": self.workflow,
            "test": self.test,
            "val": self.val,
            "delta_m": self.delta_m,
            "delta_per_task": self.delta_per_task,
            "delta_m_val": self.delta_m_val,
            "delta_skipped": self.delta_skipped,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkflowRow:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class WorkflowRun:
    """One workflow's training (``train_masked``, ``train_staged``, the annotated workflow).

    Attributes:
        val, test: every task's metrics after the last epoch (``test`` ``None`` without a test
            split).
        seconds: wall time (an annotated workflow's teachers included).
        history: one record per epoch (a staged run: of every stage, each naming its stage).
        best_epoch: the epoch selected on validation (a masked run; ``None`` for staged).
        schedule: the stages of a staged run (``Stage.to_dict``), else ``None``.
    """

    val: Metrics
    test: Metrics | None
    seconds: float
    history: list[dict[str, Any]]
    best_epoch: int | None = None
    schedule: list[dict[str, Any]] | None = None
