"""Accumulated evaluation metrics.

Every metric accumulates sufficient statistics (sums, counts, confusion matrices) over a whole
evaluation and computes its values once at the end, so the result does not depend on how the data
was split into batches. It never averages per-batch values.

A metric object has

- ``higher_is_better: dict[str, bool]`` — the names of the values it produces and their direction;
- ``update(prediction, target, mask=None)`` — ``mask`` is the per-sample bool label mask ``[B]``;
  masked-out samples are excluded, dense ignore marks (ignore index, zero depth, zero normal) are
  excluded per element;
- ``compute() -> dict[str, float]``;
- ``reset()``.

``compute()`` raises :class:`EmptyMetricError` (a ``RuntimeError``) when nothing countable was seen
since the last ``reset()`` (no labelled sample, or every pixel ignored): there is no silent NaN.

Everything is written here in torch (the core needs torch and numpy only): accuracy as exact
integer counts, the confusion matrix as one ``bincount``, regression errors as float64 sums (the
same operations torchmetrics performs, so values agree with it bit for bit; tested), depth,
normals, ball position and event spotting. States move lazily to the device of the first
prediction, so the metrics run on CPU and GPU tensors alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from taskbalance.tasks.losses import select_labelled

__all__ = [
    "Accuracy",
    "BallPositionError",
    "BinaryAccuracyMetric",
    "DepthErrors",
    "EmptyMetricError",
    "EventSpotting",
    "Metric",
    "NormalErrors",
    "RegressionErrors",
    "SegmentationMetrics",
    "miou_from_confusion",
]


class EmptyMetricError(RuntimeError):
    """``compute()`` was called although nothing countable was seen since the last ``reset()``."""


class Metric(ABC):
    """Base class of the accumulated metrics (see the module docstring)."""

    higher_is_better: dict[str, bool]

    def __init__(self) -> None:
        self._count = 0

    @property
    def names(self) -> list[str]:
        """The names of the values ``compute()`` returns."""
        return list(self.higher_is_better)

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Accumulate a batch; samples whose ``mask`` entry is ``False`` are skipped."""
        prediction, target = select_labelled(prediction.detach(), target.detach(), mask)
        if prediction.shape[0] == 0:
            return
        self._update(prediction, target)

    @abstractmethod
    def _update(self, prediction: Tensor, target: Tensor) -> None:
        """Accumulate labelled samples only."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Values over everything seen since the last reset."""

    def reset(self) -> None:
        """Forget everything seen."""
        self._count = 0
        self._reset()

    def _reset(self) -> None:  # noqa: B027 - optional hook, deliberately empty by default
        """Reset hand-written states (subclasses)."""

    def _require(self, what: str) -> None:
        if self._count == 0:
            raise EmptyMetricError(
                f"{type(self).__name__}: no {what} seen since the last reset(); every sample was "
                "masked out or every element ignored, so there is nothing to compute"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.names)})"


# --------------------------------------------------------------------------------------------------
# classification and regression
# --------------------------------------------------------------------------------------------------


class _CountingAccuracy(Metric):
    """Shared counting of ``correct / total`` as exact integers (torchmetrics' accuracy classes
    return float32, which is off by ~1e-7; the counts here are exact)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.higher_is_better = {name: True}
        self._reset()

    def _reset(self) -> None:
        self._correct = torch.zeros((), dtype=torch.int64)

    def _add(self, correct: Tensor) -> None:
        self._correct = self._correct.to(correct.device) + correct.sum()
        self._count += correct.numel()

    def compute(self) -> dict[str, float]:
        self._require("labelled sample")
        return {self.name: int(self._correct) / self._count}


class Accuracy(_CountingAccuracy):
    """Multi-class accuracy ``(# argmax(z) = y) / N`` over all labelled samples (``accuracy``).

    ``prediction``: logits/probabilities ``[B, C]`` or class indices ``[B]``; ``target``: ``[B]``.
    """

    def __init__(self, num_classes: int, *, name: str = "accuracy") -> None:
        if num_classes < 2:
            raise ValueError(f"Accuracy: num_classes must be >= 2, got {num_classes}")
        super().__init__(name)
        self.num_classes = num_classes

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.dim() == target.dim() + 1:
            if prediction.shape[1] != self.num_classes:
                raise ValueError(
                    f"Accuracy: expected {self.num_classes} class scores in dimension 1, got "
                    f"shape {list(prediction.shape)}"
                )
            prediction = prediction.argmax(dim=1)
        self._add(prediction.long() == target.long())


class BinaryAccuracyMetric(_CountingAccuracy):
    """Binary accuracy ``(# [z > 0] = [y > 0.5]) / N`` over all elements of labelled samples.

    ``prediction``: logits of any shape ``[B, ...]`` (the decision is the logit's sign, whatever
    the range of the batch); ``target``: same shape with values in {0, 1}.
    """

    def __init__(self, *, name: str = "accuracy") -> None:
        super().__init__(name)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        self._add((prediction > 0) == (target > 0.5))


class RegressionErrors(Metric):
    """``mae = Σ|ŷ - y| / N`` and ``rmse = sqrt(Σ(ŷ - y)² / N)`` over all elements of labelled
    samples (each batch's sums in the prediction's dtype, accumulated in float64)."""

    higher_is_better = {"mae": False, "rmse": False}

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self._abs = torch.zeros((), dtype=torch.float64)
        self._squared = torch.zeros((), dtype=torch.float64)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        prediction = prediction.reshape(-1)
        if not prediction.is_floating_point():
            prediction = prediction.float()
        target = target.reshape(-1).to(prediction.dtype)
        if prediction.numel() == 0:
            return
        diff = prediction - target
        self._abs = self._abs.to(diff.device) + diff.abs().sum()
        self._squared = self._squared.to(diff.device) + (diff * diff).sum()
        self._count += prediction.numel()

    def compute(self) -> dict[str, float]:
        self._require("labelled sample")
        return {
            "mae": float(self._abs / self._count),
            "rmse": float(torch.sqrt(self._squared / self._count)),
        }


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------


def miou_from_confusion(confusion: Tensor) -> tuple[float, float]:
    """``(mIoU, pixel accuracy)`` from a confusion matrix ``C[true, pred]``.

    ``IoU_c = C_cc / (Σ_j C_cj + Σ_i C_ic - C_cc)``; the mean runs over the classes that occur in
    the ground truth or in the prediction (denominator > 0), so classes absent from both are
    excluded. ``pixel_acc = trace(C) / ΣC``.

    Raises:
        EmptyMetricError: the matrix is all zeros.
    """
    confusion = confusion.to(torch.float64)
    total = confusion.sum()
    if float(total) == 0:
        raise EmptyMetricError("segmentation: no valid (non-ignored) pixel seen; mIoU undefined")
    tp = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp
    present = union > 0
    miou = (tp[present] / union[present]).mean()
    return float(miou), float(tp.sum() / total)


class SegmentationMetrics(Metric):
    """Semantic segmentation: ``miou`` and ``pixel_acc`` from one confusion matrix accumulated
    over the whole evaluation (one ``bincount`` per batch), see
    :func:`miou_from_confusion`. Pixels whose target is ``ignore_index`` are excluded.

    ``prediction``: logits ``[B, C, H, W]`` or class indices ``[B, H, W]``; ``target``:
    ``[B, H, W]``.
    """

    higher_is_better = {"miou": True, "pixel_acc": True}

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SegmentationMetrics: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._reset()

    def _reset(self) -> None:
        self._confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        C = self.num_classes
        if prediction.is_floating_point():
            if prediction.dim() != target.dim() + 1 or prediction.shape[1] != C:
                raise ValueError(
                    f"SegmentationMetrics: expected {C} class scores in dimension 1 of the "
                    f"prediction, got shape {list(prediction.shape)}"
                )
            prediction = prediction.argmax(dim=1)
        predicted, truth = prediction.reshape(-1).long(), target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = truth != self.ignore_index
            predicted, truth = predicted[keep], truth[keep]
        for name, values in (("target", truth), ("predicted class", predicted)):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= C):
                raise ValueError(
                    f"SegmentationMetrics: a {name} is outside 0..{C - 1} "
                    f"(ignore_index={self.ignore_index}); check num_classes and the targets"
                )
        counts = torch.bincount(truth * C + predicted, minlength=C * C).reshape(C, C)
        self._confusion = self._confusion.to(counts.device) + counts
        self._count += 1  # emptiness is judged on the confusion matrix itself

    @property
    def confusion(self) -> Tensor:
        """The accumulated confusion matrix ``[C, C]`` (rows: truth, columns: prediction)."""
        return self._confusion.clone()

    def compute(self) -> dict[str, float]:
        self._require("labelled sample")
        miou, pixel_acc = miou_from_confusion(self._confusion)
        return {"miou": miou, "pixel_acc": pixel_acc}


# --------------------------------------------------------------------------------------------------
# NYUv2 depth and surface normals (protocol of MTAN, Liu et al., CVPR 2019)
# --------------------------------------------------------------------------------------------------


class DepthErrors(Metric):
    """Depth errors over the valid pixels (target ``> 0``) of the whole evaluation::

        abs_err = Σ_p |d_p - d*_p| / |V|
        rel_err = Σ_p |d_p - d*_p| / d*_p / |V|

    ``V`` = every valid pixel seen (accumulated over pixels, not averaged per batch).
    ``prediction`` and ``target``: ``[B, 1, H, W]`` (any equal shapes).
    """

    higher_is_better = {"abs_err": False, "rel_err": False}

    def __init__(self) -> None:
        super().__init__()
        self._reset()

    def _reset(self) -> None:
        self._abs = torch.zeros((), dtype=torch.float64)
        self._rel = torch.zeros((), dtype=torch.float64)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        # validity and errors in float64: a half-precision prediction (AMP) must not round the
        # target (tiny depths to 0 = "invalid") or the difference before it is accumulated
        valid = target > 0
        n = int(valid.sum())
        if n == 0:
            return
        truth = target[valid].double()
        err = (prediction[valid].double() - truth).abs()
        self._abs = self._abs.to(err.device) + err.sum()
        self._rel = self._rel.to(err.device) + (err / truth).sum()
        self._count += n

    def compute(self) -> dict[str, float]:
        self._require("valid depth pixel (target > 0)")
        n = self._count
        return {"abs_err": float(self._abs) / n, "rel_err": float(self._rel) / n}


class NormalErrors(Metric):
    """Surface-normal angular errors (degrees) over every valid pixel of the evaluation.

    The angle between prediction and target is ``atan2(‖n̂ × n*‖, n̂ · n*)`` (accurate for small
    angles, no normalisation needed); a pixel is valid when its target normal is non-zero. Values:
    ``mean_angle``, ``median_angle`` (lower is better) and ``within_11.25``, ``within_22.5``,
    ``within_30`` — the *fractions* in [0, 1] of valid pixels with angle ``< t`` degrees (higher is
    better). An all-zero predicted normal counts as 90 degrees.

    The mean and the fractions are exact. The median is exact when ``exact_median=True`` (every
    angle is kept, 4 bytes per valid pixel on the prediction's device); otherwise it comes from a
    histogram of ``bin_width``-degree bins over [0°, 180°] and is within ``bin_width / 2`` of the
    exact median (0.0005° by default). For an even count the median is the mean of the two middle
    values, as in ``numpy.median``.

    ``prediction`` and ``target``: ``[B, 3, H, W]`` (channel dimension 1).
    """

    thresholds = (11.25, 22.5, 30.0)
    higher_is_better = {
        "mean_angle": False,
        "median_angle": False,
        "within_11.25": True,
        "within_22.5": True,
        "within_30": True,
    }

    def __init__(self, *, exact_median: bool = False, bin_width: float = 1e-3) -> None:
        super().__init__()
        if not 0 < bin_width <= 1:
            raise ValueError(f"NormalErrors: bin_width must be in (0, 1] degrees, got {bin_width}")
        self.exact_median = exact_median
        self.bin_width = bin_width
        self.num_bins = int(math.ceil(180.0 / bin_width))
        self._reset()

    def _reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64)
        self._within = torch.zeros(len(self.thresholds), dtype=torch.int64)
        self._hist = torch.zeros(0 if self.exact_median else self.num_bins, dtype=torch.int64)
        self._angles: list[Tensor] = []

    @staticmethod
    def angles(prediction: Tensor, target: Tensor) -> Tensor:
        """Angles in degrees ``[B, *S]`` between normals along dimension 1 (no validity mask)."""
        prediction = prediction.float() if not prediction.is_floating_point() else prediction
        target = target.to(prediction.dtype)
        dot = (prediction * target).sum(dim=1)
        cross = torch.linalg.cross(prediction, target, dim=1).norm(dim=1)
        angle = torch.rad2deg(torch.atan2(cross, dot))
        # a zero prediction has no direction: score it 90 degrees (what normalising with an eps
        # gives), never 0
        degenerate = (prediction == 0).all(dim=1)
        return torch.where(degenerate, torch.full_like(angle, 90.0), angle)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape[1] != 3:
            raise ValueError(
                f"NormalErrors: normals need 3 channels in dimension 1, got shape "
                f"{list(prediction.shape)}"
            )
        valid = (target != 0).any(dim=1)
        angle = self.angles(prediction, target)[valid]
        if angle.numel() == 0:
            return
        device = angle.device
        self._sum = self._sum.to(device) + angle.double().sum()
        limits = torch.tensor(self.thresholds, dtype=angle.dtype, device=device)
        self._within = self._within.to(device) + (angle.unsqueeze(1) < limits).sum(dim=0)
        if self.exact_median:
            self._angles.append(angle.float())
        else:
            index = (angle.double() / self.bin_width).long().clamp_(0, self.num_bins - 1)
            self._hist = self._hist.to(device) + torch.bincount(index, minlength=self.num_bins)
        self._count += angle.numel()

    def _median(self) -> float:
        n = self._count
        lower, upper = (n - 1) // 2, n // 2  # 0-based order statistics
        if self.exact_median:
            values = torch.cat(self._angles)
            a = values.kthvalue(lower + 1).values
            b = values.kthvalue(upper + 1).values
            return (float(a) + float(b)) / 2.0
        cumulative = self._hist.cumsum(0)
        ranks = torch.tensor([lower + 1, upper + 1], device=cumulative.device)
        bins = torch.searchsorted(cumulative, ranks).double()
        centres = (bins + 0.5) * self.bin_width
        return float(centres.mean())

    def compute(self) -> dict[str, float]:
        self._require("valid normal pixel (non-zero target)")
        n = self._count
        within = (self._within.double() / n).tolist()
        return {
            "mean_angle": float(self._sum) / n,
            "median_angle": self._median(),
            "within_11.25": within[0],
            "within_22.5": within[1],
            "within_30": within[2],
        }


# --------------------------------------------------------------------------------------------------
# TTNet: ball position and event spotting (Voeikov et al., CVPR Workshops 2020)
# --------------------------------------------------------------------------------------------------


class BallPositionError(Metric):
    """Ball-position RMSE in pixels from the two 1-D distributions of a TTNet-style head.

    The position ``(x̂, ŷ)`` is decoded from the logits ``[B, width + height]`` (x bins first) by

    - ``decode="argmax"`` (default): the index of the largest logit of each axis;
    - ``decode="expectation"``: ``Σ_i i · softmax(z)_i`` per axis (sub-pixel).

    ``rmse_px = sqrt( Σ_n ((x̂_n - x_n)² + (ŷ_n - y_n)²) / N )`` — the root mean squared Euclidean
    distance over all labelled samples (``target``: ``[B, 2]`` as ``(x, y)`` in pixels).
    """

    higher_is_better = {"rmse_px": False}

    def __init__(
        self, width: int, height: int, *, decode: Literal["argmax", "expectation"] = "argmax"
    ) -> None:
        super().__init__()
        if width < 1 or height < 1:
            raise ValueError(
                f"BallPositionError: width and height must be >= 1, got {width}, {height}"
            )
        if decode not in ("argmax", "expectation"):
            raise ValueError(
                f"BallPositionError: decode must be 'argmax' or 'expectation', got {decode!r}"
            )
        self.width, self.height, self.decode = width, height, decode
        self._reset()

    def _reset(self) -> None:
        self._sq = torch.zeros((), dtype=torch.float64)

    def positions(self, prediction: Tensor) -> Tensor:
        """Decoded ``(x, y)`` positions ``[B, 2]`` (float64) from logits ``[B, width + height]``."""
        if prediction.shape[-1] != self.width + self.height:
            raise ValueError(
                f"BallPositionError: expected {self.width + self.height} = width + height logits, "
                f"got shape {list(prediction.shape)}"
            )
        zx, zy = prediction[:, : self.width], prediction[:, self.width :]
        if self.decode == "argmax":
            return torch.stack([zx.argmax(dim=1), zy.argmax(dim=1)], dim=1).double()
        px, py = zx.double().softmax(dim=1), zy.double().softmax(dim=1)
        ix = torch.arange(self.width, dtype=torch.float64, device=prediction.device)
        iy = torch.arange(self.height, dtype=torch.float64, device=prediction.device)
        return torch.stack([px @ ix, py @ iy], dim=1)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        diff = self.positions(prediction) - target.double().reshape(-1, 2)
        self._sq = self._sq.to(diff.device) + diff.square().sum()
        self._count += diff.shape[0]

    def compute(self) -> dict[str, float]:
        self._require("labelled sample")
        return {"rmse_px": math.sqrt(float(self._sq) / self._count)}


class EventSpotting(Metric):
    """Event spotting scored frame by frame: a prediction is correct when the argmax of the
    per-class logits/probabilities equals the true class.

    - ``event_acc``: fraction of correct frames among frames whose true class is an event
      (every class except ``background_class``);
    - ``frame_acc`` (only with a ``background_class``): fraction of correct frames among all
      labelled frames, "no event" frames included.

    Without a background class every frame holds an event and only ``event_acc`` is reported.
    ``prediction``: ``[B, C]``; ``target``: ``[B]`` class indices.

    ``compute()`` raises :class:`EmptyMetricError` when no frame with an event was seen.
    """

    def __init__(self, num_classes: int, *, background_class: int | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"EventSpotting: num_classes must be >= 2, got {num_classes}")
        if background_class is not None and not 0 <= background_class < num_classes:
            raise ValueError(
                f"EventSpotting: background_class must be in [0, {num_classes}), "
                f"got {background_class}"
            )
        self.num_classes = num_classes
        self.background_class = background_class
        self.higher_is_better = {"event_acc": True}
        if background_class is not None:
            self.higher_is_better["frame_acc"] = True
        self._reset()

    def _reset(self) -> None:
        # [correct events, event frames, correct frames, frames]
        self._counts = torch.zeros(4, dtype=torch.int64)

    def _update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.dim() != 2 or prediction.shape[1] != self.num_classes:
            raise ValueError(
                f"EventSpotting: expected prediction [B, {self.num_classes}], "
                f"got shape {list(prediction.shape)}"
            )
        target = target.long().reshape(-1)
        correct = prediction.argmax(dim=1) == target
        if self.background_class is None:
            is_event = torch.ones_like(correct)
        else:
            is_event = target != self.background_class
        batch = torch.stack(
            [
                (correct & is_event).sum(),
                is_event.sum(),
                correct.sum(),
                torch.tensor(target.numel(), device=target.device),
            ]
        )
        self._counts = self._counts.to(batch.device) + batch
        self._count += target.numel()

    def compute(self) -> dict[str, float]:
        self._require("labelled frame")
        correct_events, events, correct, frames = self._counts.tolist()
        if events == 0:
            raise EmptyMetricError(
                "EventSpotting: no frame with an event (true class != background_class "
                f"{self.background_class}) was seen since the last reset(); event_acc is undefined"
            )
        out = {"event_acc": correct_events / events}
        if self.background_class is not None:
            out["frame_acc"] = correct / frames
        return out
