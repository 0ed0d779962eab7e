"""Task kinds: one :class:`TaskKind` object per kind carries everything that depends on it.

A kind says which prediction/target shapes fit (checked by :meth:`Task.loss`), which factory
builds a ready :class:`~taskbalance.tasks.task.Task` of it (its loss and metrics, see
:mod:`taskbalance.tasks.presets`), and how confident a prediction is when it is used as a
pseudo-label (``taskbalance annotate``). Adding a kind is one :func:`register_kind` call; no code
elsewhere names kinds::

    register_kind(TaskKind("count", "prediction and target [B]", same_shape, confidence=...))
    Task("cars", l1_loss, RegressionErrors(), kind="count")

The built-in kinds are registered by :mod:`taskbalance.tasks.presets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

if TYPE_CHECKING:
    from taskbalance.tasks.task import Task

__all__ = [
    "ConfidentLabels",
    "TaskKind",
    "find_kind",
    "get_kind",
    "register_kind",
    "same_batch",
    "same_shape",
    "task_kinds",
]

Shape = tuple[int, ...]


class ConfidentLabels(NamedTuple):
    """Pseudo-labels of one batch of ``B`` samples, as a confidence rule returns them.

    ``values``: the labels (target layout; rejected elements of dense targets hold the task's
    invalid mark); ``confidence``: float ``[B]`` (mean over elements for dense kinds);
    ``coverage``: float ``[B]``, the fraction of elements kept (1 for per-sample kinds);
    ``kept``: bool ``[B]``, whether the sample gets its label at all.
    """

    values: Tensor
    confidence: Tensor
    coverage: Tensor
    kept: Tensor


#: ``rule(task, prediction, mirrored, threshold) -> ConfidentLabels``; ``mirrored`` is the
#: prediction on the horizontally mirrored input mapped back (``None`` unless the kind has
#: ``mirror_back``).
ConfidenceFn = Callable[["Task", Tensor, "Tensor | None", float], ConfidentLabels]


@dataclass(frozen=True)
class TaskKind:
    """Everything that depends on the kind of a task.

    Attributes:
        name: the kind's name (``Task(kind=name)``; stored with pseudo-labels).
        shapes: the expected prediction/target shapes in words (shown in shape errors).
        fits: ``fits(prediction_shape, target_shape) -> bool``.
        preset: the factory of a ready task of this kind, which chooses its loss and metrics
            (e.g. :func:`~taskbalance.tasks.presets.segmentation_task`); ``None`` if there is none.
        confidence: the pseudo-label confidence rule, or ``None`` when ``annotate`` cannot
            label this kind.
        confidence_rule: that rule in words (stored with the pseudo-labels).
        mirror_back: for rules by test-time flip agreement: maps a prediction on the
            horizontally mirrored input back to the original frame (``None``: no second pass).
        dense: the target is a map whose elements are labelled separately (coverage matters).
    """

    name: str
    shapes: str
    fits: Callable[[Shape, Shape], bool]
    preset: Callable[..., Task] | None = None
    confidence: ConfidenceFn | None = None
    confidence_rule: str = ""
    mirror_back: Callable[[Tensor], Tensor] | None = None
    dense: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task kind needs a non-empty name, got {self.name!r}")
        if not callable(self.fits):
            raise ValueError(f"task kind {self.name!r}: fits must be callable (shapes) -> bool")
        if self.confidence is not None and not self.confidence_rule:
            raise ValueError(
                f"task kind {self.name!r}: describe its confidence rule in confidence_rule "
                "(it is stored with the pseudo-labels)"
            )

    def check_shapes(self, task: str, prediction: Tensor, target: Tensor) -> None:
        """``ValueError`` naming the task and both shapes when they do not fit this kind."""
        p, t = tuple(prediction.shape), tuple(target.shape)
        if not self.fits(p, t):
            raise ValueError(
                f"task {task!r} ({self.name}): prediction shape {list(p)} does not fit target "
                f"shape {list(t)}; expected {self.shapes}"
            )


def same_shape(p: Shape, t: Shape) -> bool:
    """Prediction and target of the same shape ``[B, ...]``."""
    return p == t and len(p) >= 1


def same_batch(p: Shape, t: Shape) -> bool:
    """Prediction and target with the same batch size (the ``custom`` kind)."""
    return len(p) >= 1 and len(t) >= 1 and p[0] == t[0]


_REGISTRY: dict[str, TaskKind] = {}


def register_kind(kind: TaskKind) -> TaskKind:
    """Make ``kind`` usable by name (``Task(kind=kind.name)``); returns it.

    Raises:
        ValueError: another kind of that name is registered already.
    """
    if not isinstance(kind, TaskKind):
        raise ValueError(f"register_kind takes a TaskKind, got {type(kind).__name__}")
    known = _REGISTRY.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"a task kind named {kind.name!r} is registered already")
    _REGISTRY[kind.name] = kind
    return kind


def find_kind(name: str) -> TaskKind | None:
    """The registered kind ``name``, or ``None``."""
    return _REGISTRY.get(name)


def get_kind(kind: str | TaskKind, *, task: str | None = None) -> TaskKind:
    """The kind object for a name (a :class:`TaskKind` passes through).

    Raises:
        ValueError: no kind of that name is registered (the message lists the known ones).
    """
    if isinstance(kind, TaskKind):
        return kind
    found = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if found is None:
        who = f"task {task!r}: " if task is not None else ""
        raise ValueError(
            f"{who}unknown kind {kind!r}; valid kinds are {task_kinds()} "
            "(register a new one with taskbalance.tasks.register_kind)"
        )
    return found


def task_kinds(*, with_confidence: bool = False) -> list[str]:
    """Names of the registered kinds (only those ``annotate`` can label, if asked)."""
    return [n for n, k in _REGISTRY.items() if not with_confidence or k.confidence is not None]


register_kind(TaskKind("custom", "prediction and target with the same batch size", same_batch))
