"""Masked loss functions for the usual task kinds.

Every loss here has the signature ``loss(prediction, target, mask=None, **options)`` and

- keeps only the samples whose per-sample ``mask`` entry is ``True`` (``mask`` is a bool tensor of
  shape ``[B]``; ``None`` means every sample is labelled),
- drops the elements that a dense target marks as missing (ignore index for segmentation, zero
  depth, zero normal vector),
- returns the **mean over the remaining (valid) elements**, or ``None`` when no element is valid, so
  the caller can drop the task for this step (no NaN, no gradient).

Dropped samples are removed by indexing before the loss is evaluated, so whatever placeholder they
carry (zeros, garbage) never reaches the loss or its gradient.

These functions validate only what they need to compute; :class:`taskbalance.tasks.Task` adds the
shape and NaN checks with messages that name the task.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ball_position_loss",
    "binary_cross_entropy",
    "cross_entropy",
    "depth_l1_loss",
    "dice_loss",
    "gaussian_1d_target",
    "l1_loss",
    "mse_loss",
    "normal_cosine_loss",
    "pixel_cross_entropy",
    "select_labelled",
]


def select_labelled(
    prediction: Tensor, target: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Keep the samples (first dimension) whose ``mask`` entry is ``True``.

    Args:
        prediction: ``[B, ...]``.
        target: ``[B, ...]``.
        mask: bool ``[B]`` (True = labelled), or ``None`` for "all labelled". Any other dtype is
            converted with ``mask != 0``.

    Raises:
        ValueError: ``mask`` is not one entry per sample.
    """
    if mask is None:
        return prediction, target
    batch = prediction.shape[0] if prediction.dim() > 0 else 1
    mask = sample_mask(mask, batch, prediction.device)
    return prediction[mask], target[mask.to(target.device)]


def sample_mask(mask: Tensor, batch: int, device: torch.device, *, prefix: str = "") -> Tensor:
    """``mask`` checked to be one entry per sample (``[batch]``), as a bool tensor on ``device``.

    Non-bool masks are converted with ``mask != 0``. Shared by :func:`select_labelled` and
    :meth:`taskbalance.tasks.Task.validate` (which passes ``prefix="task 'name': "``).

    Raises:
        ValueError: ``mask`` is not of shape ``[batch]``; the message starts with ``prefix``.
    """
    mask = torch.as_tensor(mask, device=device)
    if mask.dim() != 1 or mask.shape[0] != batch:
        raise ValueError(
            f"{prefix}the label mask must hold one bool per sample, shape [{batch}], got shape "
            f"{list(mask.shape)}; mark missing per-pixel labels inside the target instead "
            "(ignore index, zero depth, zero normal)"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _masked_mean(values: Tensor, valid: Tensor | None = None) -> Tensor | None:
    """Mean of ``values`` over ``valid`` elements; ``None`` when there are none."""
    if valid is None:
        if values.numel() == 0:
            return None
        return values.mean()
    count = valid.sum()
    if int(count) == 0:
        return None
    zeros = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(valid, values, zeros).sum() / count.to(values.dtype)


# --------------------------------------------------------------------------------------------------
# classification and regression
# --------------------------------------------------------------------------------------------------


def cross_entropy(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> Tensor | None:
    """Softmax cross-entropy ``-log softmax(z)_y`` averaged over labelled samples.

    Args:
        prediction: logits ``[B, C]`` (or ``[B, C, *S]``; see :func:`pixel_cross_entropy`).
        target: class indices ``[B]`` (``[B, *S]``), integer dtype.
        mask: per-sample bool mask ``[B]``.
        ignore_index: a target value that marks an element without label (optional).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
    """
    prediction, target = select_labelled(prediction, target, mask)
    if prediction.shape[0] == 0:
        return None
    target = target.long()
    if ignore_index is None:
        losses = F.cross_entropy(
            prediction, target, reduction="none", label_smoothing=label_smoothing
        )
        return _masked_mean(losses)
    losses = F.cross_entropy(
        prediction,
        target,
        reduction="none",
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    return _masked_mean(losses, target != ignore_index)


def pixel_cross_entropy(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    ignore_index: int = 255,
) -> Tensor | None:
    """Per-pixel softmax cross-entropy averaged over the labelled pixels.

    ``loss = (1/|V|) Σ_{p∈V} -log softmax(z_p)_{y_p}``, ``V`` = pixels of labelled samples whose
    target is not ``ignore_index``.

    Args:
        prediction: logits ``[B, C, H, W]`` (any number of spatial dims).
        target: class indices ``[B, H, W]``; ``ignore_index`` (default 255) marks unlabelled pixels.
        mask: per-sample bool mask ``[B]``.
    """
    return cross_entropy(prediction, target, mask, ignore_index=ignore_index)


def binary_cross_entropy(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    ignore_value: float | None = None,
    pos_weight: Tensor | None = None,
) -> Tensor | None:
    """Binary cross-entropy with logits, averaged over labelled elements.

    ``loss = mean -[y log σ(z) + (1 - y) log(1 - σ(z))]`` (numerically stable form).

    Args:
        prediction: logits, any shape ``[B, ...]``.
        target: same shape, values in ``[0, 1]``.
        mask: per-sample bool mask ``[B]``.
        ignore_value: a target value that marks an element without label (e.g. ``-1``).
        pos_weight: optional weight of positive examples, as in ``BCEWithLogitsLoss``.
    """
    prediction, target = select_labelled(prediction, target, mask)
    if prediction.numel() == 0:
        return None
    target = target.to(prediction.dtype)
    valid = None if ignore_value is None else target != ignore_value
    safe_target = target if valid is None else torch.where(valid, target, 0.0)
    losses = F.binary_cross_entropy_with_logits(
        prediction, safe_target, reduction="none", pos_weight=pos_weight
    )
    return _masked_mean(losses, valid)


def l1_loss(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor | None:
    """Mean absolute error ``mean |ŷ - y|`` over the elements of labelled samples."""
    prediction, target = select_labelled(prediction, target, mask)
    return _masked_mean((prediction - target.to(prediction.dtype)).abs())


def mse_loss(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor | None:
    """Mean squared error ``mean (ŷ - y)²`` over the elements of labelled samples."""
    prediction, target = select_labelled(prediction, target, mask)
    return _masked_mean((prediction - target.to(prediction.dtype)).square())


# --------------------------------------------------------------------------------------------------
# dense geometry (NYUv2 protocol of MTAN: Liu, Johns & Davison, CVPR 2019)
# --------------------------------------------------------------------------------------------------


def depth_l1_loss(prediction: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor | None:
    """L1 depth loss over valid pixels (target depth ``> 0``), as in the NYUv2 protocol of MTAN.

    ``loss = (1/|V|) Σ_{p∈V} |d_p - d*_p|``, ``V = {p : d*_p > 0}`` over labelled samples.

    Args:
        prediction: ``[B, 1, H, W]`` (any shape equal to the target's).
        target: same shape; ``0`` (or any value ``<= 0``) marks a pixel without depth.
    """
    prediction, target = select_labelled(prediction, target, mask)
    target = target.to(prediction.dtype)
    return _masked_mean((prediction - target).abs(), target > 0)


def _unit(x: Tensor, dim: int = 1, eps: float = 1e-12) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def normal_cosine_loss(
    prediction: Tensor, target: Tensor, mask: Tensor | None = None
) -> Tensor | None:
    """Surface-normal loss ``1 - cos(n̂, n*)`` averaged over valid pixels.

    Both the prediction and the target are L2-normalised along the channel dimension; a pixel is
    valid when its target normal is non-zero. (MTAN, Liu et al. CVPR 2019, uses the same loss with a
    unit-norm target.)

    Args:
        prediction: ``[B, 3, H, W]`` (channel dimension 1).
        target: same shape; an all-zero vector marks a pixel without normal.
    """
    prediction, target = select_labelled(prediction, target, mask)
    if prediction.numel() == 0:
        return None
    target = target.to(prediction.dtype)
    valid = (target != 0).any(dim=1)
    cosine = (_unit(prediction) * _unit(target)).sum(dim=1)
    return _masked_mean(1.0 - cosine, valid)


def dice_loss(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
) -> Tensor | None:
    """Soft multi-class Dice loss over the valid pixels of the labelled samples.

    With ``p_{c,i} = softmax(z_i)_c`` and one-hot ``g_{c,i}`` over valid pixels ``i``
    (target ``!= ignore_index``) of the whole batch::

        dice_c = (2 Σ_i p_{c,i} g_{c,i} + s) / (Σ_i p_{c,i} + Σ_i g_{c,i} + s)
        loss   = 1 - (1/C) Σ_c dice_c

    (Milletari et al., V-Net, 3DV 2016; ``s = smooth`` avoids 0/0 for absent classes.) Dice is a
    set-level overlap, not a per-pixel mean: it is computed once over all valid pixels.

    Args:
        prediction: logits ``[B, C, H, W]``.
        target: class indices ``[B, H, W]``.
        ignore_index: marks unlabelled pixels (default 255).
        smooth: additive smoothing ``s`` (> 0).
    """
    if smooth <= 0:
        raise ValueError(f"dice_loss: smooth must be > 0, got {smooth}")
    prediction, target = select_labelled(prediction, target, mask)
    if prediction.numel() == 0:
        return None
    target = target.long()
    valid = target != ignore_index
    if not bool(valid.any()):  # the one host sync: "no valid pixel" must return None
        return None
    num_classes = prediction.shape[1]
    # zero the ignored pixels instead of boolean indexing (which would sync again and copy)
    keep = valid.unsqueeze(-1)  # [B, *S, 1]
    probs = torch.where(keep, prediction.softmax(dim=1).movedim(1, -1), 0.0)  # [B, *S, C]
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).to(probs.dtype) * keep
    dims = tuple(range(probs.dim() - 1))
    intersection = (probs * onehot).sum(dim=dims)
    denominator = probs.sum(dim=dims) + onehot.sum(dim=dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


# --------------------------------------------------------------------------------------------------
# TTNet ball localisation (Voeikov, Falaleev & Baikulov, CVPRW 2020)
# --------------------------------------------------------------------------------------------------


def gaussian_1d_target(
    coords: Tensor, length: int, sigma: float, *, normalize: bool = False
) -> Tensor:
    """Gaussian-smoothed 1-D target vectors centred on ``coords``.

    ``t_{n,i} = exp(-(i - c_n)² / (2σ²))`` for bins ``i = 0 … length-1`` (bin ``i`` is pixel
    coordinate ``i``), peak value 1 at the true coordinate. With ``normalize=True`` each row sums
    to 1 (a probability distribution).

    Args:
        coords: ``[N]`` coordinates in pixels of the prediction grid (float or int). Coordinates
            outside ``[0, length)`` give a vector holding only the Gaussian's tail.
        length: number of bins (image width for x, height for y).
        sigma: standard deviation in pixels (> 0).

    Returns:
        ``[N, length]`` tensor (float dtype of ``coords``, float32 for integer coords).
    """
    if sigma <= 0:
        raise ValueError(f"gaussian_1d_target: sigma must be > 0 pixels, got {sigma}")
    if length <= 0:
        raise ValueError(f"gaussian_1d_target: length must be a positive int, got {length}")
    coords = torch.as_tensor(coords)
    dtype = coords.dtype if coords.is_floating_point() else torch.float32
    coords = coords.to(dtype).reshape(-1, 1)
    positions = torch.arange(length, dtype=dtype, device=coords.device).unsqueeze(0)
    target = torch.exp(-((positions - coords) ** 2) / (2.0 * sigma * sigma))
    if normalize:
        target = target / target.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return target


def ball_position_loss(
    prediction: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    width: int,
    height: int,
    sigma: float = 1.0,
    activation: Literal["softmax", "sigmoid"] = "softmax",
) -> Tensor | None:
    """TTNet ball-localisation loss (Voeikov et al., "TTNet: Real-time temporal and spatial video
    analysis of table tennis", CVPR Workshops 2020).

    The ball position is predicted as two 1-D distributions, one over the ``width`` columns (x) and
    one over the ``height`` rows (y). The targets are Gaussian-smoothed vectors ``t^x, t^y``
    (:func:`gaussian_1d_target`, peak 1) centred on the true coordinate, and the loss of a sample is
    the cross-entropy between prediction and smoothed target, averaged over the bins of each axis::

        softmax:  L = -(1/W) Σ_i t^x_i log p^x_i  -  (1/H) Σ_j t^y_j log p^y_j,
                  p^x = softmax(z[:W]), p^y = softmax(z[W:])
        sigmoid:  L = (1/W) Σ_i BCE(σ(z_i), t^x_i)  +  (1/H) Σ_j BCE(σ(z_{W+j}), t^y_j)

    The result is the mean of ``L`` over labelled samples (samples without a visible ball should be
    masked out).

    Args:
        prediction: logits ``[B, width + height]`` (x bins first, then y bins).
        target: ball coordinates ``[B, 2]`` as ``(x, y)`` in pixels of the prediction grid.
        mask: per-sample bool mask ``[B]``.
        width, height: number of x and y bins.
        sigma: standard deviation of the smoothing Gaussian, in pixels.
        activation: ``"softmax"`` (one distribution per axis) or ``"sigmoid"`` (independent bins).
    """
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(
            f"ball_position_loss: activation must be 'softmax' or 'sigmoid', got {activation!r}"
        )
    if prediction.shape[-1] != width + height:
        raise ValueError(
            f"ball_position_loss: prediction must have width + height = {width + height} logits "
            f"in its last dimension, got shape {list(prediction.shape)}"
        )
    prediction, target = select_labelled(prediction, target, mask)
    if prediction.shape[0] == 0:
        return None
    target = target.to(prediction.dtype)
    tx = gaussian_1d_target(target[:, 0], width, sigma)
    ty = gaussian_1d_target(target[:, 1], height, sigma)
    zx, zy = prediction[:, :width], prediction[:, width:]
    if activation == "softmax":
        loss_x = -(tx * F.log_softmax(zx, dim=1)).mean(dim=1)
        loss_y = -(ty * F.log_softmax(zy, dim=1)).mean(dim=1)
    else:
        loss_x = F.binary_cross_entropy_with_logits(zx, tx, reduction="none").mean(dim=1)
        loss_y = F.binary_cross_entropy_with_logits(zy, ty, reduction="none").mean(dim=1)
    return (loss_x + loss_y).mean()
