"""Factories for ready-made tasks of the usual kinds.

- ``classification_task``: logits ``[B, C]`` / ``[B]``; cross-entropy; ``accuracy``.
- ``binary_task``: logits ``[B, ...]`` / same in {0, 1}; BCE with logits; ``accuracy``.
- ``regression_task``: ``[B, ...]`` / same; L1 or MSE; ``mae``, ``rmse``.
- ``segmentation_task``: logits ``[B, C, H, W]`` / ``[B, H, W]``; pixel CE (or Dice, or both);
  ``miou``, ``pixel_acc``.
- ``depth_task``: ``[B, 1, H, W]`` / same, 0 = no depth; masked L1; ``abs_err``, ``rel_err``.
- ``normal_task``: ``[B, 3, H, W]`` / same, 0 = no normal; ``1 - cos``; ``mean_angle``,
  ``median_angle``, ``within_11.25``, ``within_22.5``, ``within_30``.
- ``ball_position_task``: logits ``[B, W + H]`` / ``[B, 2]`` (x, y); TTNet 1-D cross-entropy;
  ``rmse_px``.
- ``event_task``: logits ``[B, C]`` / ``[B]``; cross-entropy; ``event_acc`` (and ``frame_acc``).

The first metric listed is the primary one. Each factory is the ``preset`` of its
:class:`~taskbalance.tasks.kinds.TaskKind`, registered at the end of this module with the kind's
shapes and pseudo-label confidence rule.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from torch import Tensor

from taskbalance.tasks import confidence, losses
from taskbalance.tasks.kinds import Shape, TaskKind, register_kind, same_shape
from taskbalance.tasks.metrics import (
    Accuracy,
    BallPositionError,
    BinaryAccuracyMetric,
    DepthErrors,
    EventSpotting,
    NormalErrors,
    RegressionErrors,
    SegmentationMetrics,
)
from taskbalance.tasks.task import Task
from taskbalance.validation import is_int

__all__ = [
    "BALL_POSITION",
    "BINARY",
    "CLASSIFICATION",
    "DEPTH",
    "EVENT",
    "NORMAL",
    "REGRESSION",
    "SEGMENTATION",
    "ball_position_task",
    "binary_task",
    "classification_task",
    "depth_task",
    "event_task",
    "normal_task",
    "regression_task",
    "segmentation_task",
]


def _check_count(factory: str, what: str, value: int, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{factory}: {what} must be an int >= {minimum}, got {value!r}")


def classification_task(name: str, num_classes: int, *, label_smoothing: float = 0.0) -> Task:
    """Multi-class classification: cross-entropy loss, metric ``accuracy`` (primary)."""
    _check_count("classification_task", "num_classes", num_classes, 2)
    return Task(
        name,
        partial(losses.cross_entropy, label_smoothing=label_smoothing),
        Accuracy(num_classes),
        primary_metric="accuracy",
        kind="classification",
    )


def binary_task(name: str) -> Task:
    """Binary (or multi-label) classification from logits: BCE with logits, metric ``accuracy``."""
    return Task(
        name,
        losses.binary_cross_entropy,
        BinaryAccuracyMetric(),
        primary_metric="accuracy",
        kind="binary",
    )


def regression_task(name: str, *, loss: Literal["l1", "mse"] = "l1") -> Task:
    """Regression: L1 or MSE loss, metrics ``mae`` and ``rmse`` (primary: ``mae`` for the L1 loss,
    ``rmse`` for MSE)."""
    if loss not in ("l1", "mse"):
        raise ValueError(f"regression_task: loss must be 'l1' or 'mse', got {loss!r}")
    loss_fn = losses.l1_loss if loss == "l1" else losses.mse_loss
    return Task(
        name,
        loss_fn,
        RegressionErrors(),
        primary_metric="mae" if loss == "l1" else "rmse",
        kind="regression",
    )


def _ce_plus_dice(
    prediction: Tensor, target: Tensor, mask: Tensor | None = None, *, ignore_index: int
) -> Tensor | None:
    """Pixel cross-entropy + soft Dice (each over the valid pixels)."""
    ce = losses.pixel_cross_entropy(prediction, target, mask, ignore_index=ignore_index)
    if ce is None:
        return None
    dice = losses.dice_loss(prediction, target, mask, ignore_index=ignore_index)
    return ce if dice is None else ce + dice


def segmentation_task(
    name: str,
    num_classes: int,
    ignore_index: int = 255,
    *,
    loss: Literal["ce", "dice", "ce+dice"] = "ce",
) -> Task:
    """Semantic segmentation: per-pixel cross-entropy (or Dice, or both) ignoring
    ``ignore_index``; metrics ``miou`` (primary) and ``pixel_acc`` from an accumulated confusion
    matrix."""
    _check_count("segmentation_task", "num_classes", num_classes, 2)
    if loss == "ce":
        loss_fn = partial(losses.pixel_cross_entropy, ignore_index=ignore_index)
    elif loss == "dice":
        loss_fn = partial(losses.dice_loss, ignore_index=ignore_index)
    elif loss == "ce+dice":
        loss_fn = partial(_ce_plus_dice, ignore_index=ignore_index)
    else:
        raise ValueError(f"segmentation_task: loss must be 'ce', 'dice' or 'ce+dice', got {loss!r}")
    return Task(
        name,
        loss_fn,
        SegmentationMetrics(num_classes, ignore_index=ignore_index),
        primary_metric="miou",
        kind="segmentation",
        ignore_value=ignore_index,
    )


def depth_task(name: str) -> Task:
    """Depth estimation (NYUv2 protocol of MTAN): L1 on pixels with target depth > 0; metrics
    ``abs_err`` (primary) and ``rel_err``."""
    return Task(
        name,
        losses.depth_l1_loss,
        DepthErrors(),
        primary_metric="abs_err",
        kind="depth",
        ignore_value=0.0,
    )


def normal_task(name: str, *, exact_median: bool = False) -> Task:
    """Surface normals (NYUv2 protocol of MTAN): ``1 - cos`` loss on pixels with a non-zero target
    normal; metrics ``mean_angle`` (primary), ``median_angle``, ``within_11.25``, ``within_22.5``,
    ``within_30`` (see :class:`~taskbalance.tasks.metrics.NormalErrors` for the median's
    precision)."""
    return Task(
        name,
        losses.normal_cosine_loss,
        NormalErrors(exact_median=exact_median),
        primary_metric="mean_angle",
        kind="normal",
        ignore_value=0.0,
    )


def ball_position_task(
    name: str,
    width: int,
    height: int,
    sigma: float = 1.0,
    *,
    activation: Literal["softmax", "sigmoid"] = "softmax",
    decode: Literal["argmax", "expectation"] = "argmax",
) -> Task:
    """TTNet ball localisation (Voeikov et al., CVPRW 2020): prediction = logits
    ``[B, width + height]`` (x bins, then y bins), target = ``[B, 2]`` ``(x, y)`` pixels; loss =
    :func:`~taskbalance.tasks.losses.ball_position_loss` with Gaussian smoothing ``sigma`` pixels;
    metric ``rmse_px`` (position decoded by ``decode``). Mask out frames without a visible ball."""
    _check_count("ball_position_task", "width", width, 1)
    _check_count("ball_position_task", "height", height, 1)
    if sigma <= 0:
        raise ValueError(f"ball_position_task: sigma must be > 0 pixels, got {sigma}")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(
            f"ball_position_task: activation must be 'softmax' or 'sigmoid', got {activation!r}"
        )
    loss_fn = partial(
        losses.ball_position_loss, width=width, height=height, sigma=sigma, activation=activation
    )
    return Task(
        name,
        loss_fn,
        BallPositionError(width, height, decode=decode),
        primary_metric="rmse_px",
        kind="ball_position",
    )


def event_task(name: str, num_classes: int, *, background_class: int | None = None) -> Task:
    """Event spotting per frame: cross-entropy over ``num_classes`` classes; metric ``event_acc``
    (fraction of event frames whose argmax class is right; primary) and, with a
    ``background_class`` ("no event"), ``frame_acc`` over all frames."""
    _check_count("event_task", "num_classes", num_classes, 2)
    return Task(
        name,
        losses.cross_entropy,
        EventSpotting(num_classes, background_class=background_class),
        primary_metric="event_acc",
        kind="event",
    )


# ------------------------------------------------------------------------------ built-in kinds


def _class_logits(p: Shape, t: Shape) -> bool:
    return len(p) == 2 and t == p[:1]


def _pixel_logits(p: Shape, t: Shape) -> bool:
    return len(p) >= 3 and t == p[:1] + p[2:]


def _normal_maps(p: Shape, t: Shape) -> bool:
    return same_shape(p, t) and len(p) >= 2 and p[1] == 3


def _ball_logits(p: Shape, t: Shape) -> bool:
    return len(p) == 2 and len(t) == 2 and t == (p[0], 2)


_MAX_SOFTMAX = "max softmax probability"
_DEPTH_RULE = "horizontal-flip agreement clip(1 - |d1-d2| / mean(|d1|,|d2|), 0, 1) per pixel"

CLASSIFICATION = TaskKind(
    "classification",
    "prediction [B, C] logits, target [B] class indices",
    _class_logits,
    classification_task,
    confidence.max_softmax,
    _MAX_SOFTMAX,
)
BINARY = TaskKind(
    "binary",
    "prediction and target of the same shape [B, ...]",
    same_shape,
    binary_task,
    confidence.binary_margin,
    "min over elements of max(p, 1-p) of the sigmoid",
)
REGRESSION = TaskKind(
    "regression", "prediction and target of the same shape [B, ...]", same_shape, regression_task
)
SEGMENTATION = TaskKind(
    "segmentation",
    "prediction [B, C, H, W] logits, target [B, H, W] class indices",
    _pixel_logits,
    segmentation_task,
    confidence.pixel_max_softmax,
    "per-pixel max softmax probability; low pixels -> ignore index",
    dense=True,
)
DEPTH = TaskKind(
    "depth",
    "prediction and target of the same shape [B, 1, H, W]",
    same_shape,
    depth_task,
    confidence.depth_flip_agreement,
    _DEPTH_RULE,
    mirror_back=confidence.mirror_depth,
    dense=True,
)
NORMAL = TaskKind(
    "normal",
    "prediction and target of the same shape [B, 3, H, W]",
    _normal_maps,
    normal_task,
    confidence.normal_flip_agreement,
    "horizontal-flip agreement max(0, cos(n1, n2)) per pixel",
    mirror_back=confidence.mirror_normals,
    dense=True,
)
BALL_POSITION = TaskKind(
    "ball_position",
    "prediction [B, width + height] logits, target [B, 2] (x, y) pixels",
    _ball_logits,
    ball_position_task,
    confidence.ball_peak_mass,
    "min over x, y of the softmax mass within +-2 bins of the argmax",
)
EVENT = TaskKind(
    "event",
    "prediction [B, C] logits, target [B] class indices",
    _class_logits,
    event_task,
    confidence.max_softmax,
    _MAX_SOFTMAX,
)

for _kind in (
    CLASSIFICATION, BINARY, REGRESSION, SEGMENTATION, DEPTH, NORMAL, BALL_POSITION, EVENT
):  # fmt: skip
    register_kind(_kind)
