"""Confidence rules of the built-in task kinds: how sure a teacher's prediction is when it is kept
as a pseudo-label (``taskbalance annotate``; the rules are described in
:mod:`taskbalance.experiments.annotate`).

Each rule is ``rule(task, prediction, mirrored, threshold) -> ConfidentLabels``. Per-sample rules
keep a sample when its confidence reaches the threshold; dense rules reject the pixels below it
(they get the task's invalid mark) and keep a sample with any pixel left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from taskbalance.tasks.kinds import ConfidentLabels

if TYPE_CHECKING:
    from taskbalance.tasks.task import Task

__all__ = [
    "BALL_RADIUS",
    "ball_peak_mass",
    "binary_margin",
    "depth_flip_agreement",
    "max_softmax",
    "mirror_depth",
    "mirror_normals",
    "normal_flip_agreement",
    "pixel_max_softmax",
]

#: Bins either side of the argmax whose softmax mass is the ball position's confidence.
BALL_RADIUS = 2


def _per_sample(values: Tensor, conf: Tensor, threshold: float) -> ConfidentLabels:
    ones = torch.ones(conf.shape[0], device=conf.device)
    return ConfidentLabels(values, conf, ones, conf >= threshold)


def _dense(values: Tensor, conf_px: Tensor, ok: Tensor) -> ConfidentLabels:
    b = values.shape[0]
    coverage = ok.reshape(b, -1).float().mean(dim=1)
    conf = conf_px.reshape(b, -1).mean(dim=1)
    return ConfidentLabels(values, conf, coverage, coverage > 0)


def max_softmax(
    task: Task, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> ConfidentLabels:
    """Classification / event: the largest softmax probability; the label is the argmax."""
    del task, mirrored
    conf, values = pred.float().softmax(dim=1).max(dim=1)
    return _per_sample(values, conf, threshold)


def binary_margin(
    task: Task, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> ConfidentLabels:
    """Binary: per element ``max(p, 1 - p)`` of the sigmoid; a sample's confidence is its least
    confident element."""
    del task, mirrored
    p = pred.float().sigmoid()
    values = (p > 0.5).to(pred.dtype)
    conf = torch.maximum(p, 1 - p).reshape(pred.shape[0], -1).min(dim=1).values
    return _per_sample(values, conf, threshold)


def _ball_size(task: Task) -> tuple[int, int]:
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


def ball_peak_mass(
    task: Task, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> ConfidentLabels:
    """Ball position: per axis the softmax mass within ``BALL_RADIUS`` bins of the argmax; the
    smaller of x and y; the label is the argmax position (pixels)."""
    del mirrored
    width, height = _ball_size(task)
    x, cx = _peak_mass(pred[:, :width], BALL_RADIUS)
    y, cy = _peak_mass(pred[:, width : width + height], BALL_RADIUS)
    values = torch.stack([x, y], dim=1).float()
    return _per_sample(values, torch.minimum(cx, cy), threshold)


def pixel_max_softmax(
    task: Task, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> ConfidentLabels:
    """Segmentation: per pixel the largest softmax probability; rejected pixels get the task's
    ignore index (255 when it has none)."""
    del mirrored
    conf_px, values = pred.float().softmax(dim=1).max(dim=1)
    ok = conf_px >= threshold
    ignore = int(task.ignore_value if task.ignore_value is not None else 255)
    values = torch.where(ok, values, torch.full_like(values, ignore))
    return _dense(values, conf_px, ok)


def depth_flip_agreement(
    task: Task, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> ConfidentLabels:
    """Depth: per pixel ``clip(1 - |d1 - d2| / ((|d1| + |d2|) / 2), 0, 1)``; the label is the
    mean of both; rejected pixels (or a mean depth <= 0) get depth 0, the invalid mark."""
    del task
    if mirrored is None:
        raise ValueError("the depth confidence rule needs the mirrored prediction")
    d1, d2 = pred.float(), mirrored.float()
    scale = (d1.abs() + d2.abs()) / 2
    conf_px = (1 - (d1 - d2).abs() / scale.clamp_min(1e-6)).clamp(0, 1)
    values = (d1 + d2) / 2
    ok = (conf_px >= threshold) & (values > 0)
    values = torch.where(ok, values, torch.zeros_like(values))
    return _dense(values, conf_px, ok)


def normal_flip_agreement(
    task: Task, pred: Tensor, mirrored: Tensor | None, threshold: float
) -> ConfidentLabels:
    """Normals: per pixel ``max(0, cos(n1, n2))``; the label is the normalised mean; rejected
    pixels get the zero vector (invalid mark)."""
    del task
    if mirrored is None:
        raise ValueError("the normal confidence rule needs the mirrored prediction")
    n1 = F.normalize(pred.float(), dim=1)
    n2 = F.normalize(mirrored.float(), dim=1)
    conf_px = (n1 * n2).sum(dim=1, keepdim=True).clamp(0, 1)
    values = F.normalize(n1 + n2, dim=1)
    ok = conf_px >= threshold
    values = torch.where(ok, values, torch.zeros_like(values))
    return _dense(values, conf_px[:, 0], ok[:, 0])


def mirror_depth(pred: Tensor) -> Tensor:
    """A depth map predicted on the mirrored image, in the original frame."""
    return pred.flip(-1)


def mirror_normals(pred: Tensor) -> Tensor:
    """Normals predicted on the mirrored image, in the original frame (x component negated)."""
    out = pred.flip(-1).clone()
    out[:, 0] = -out[:, 0]
    return out
