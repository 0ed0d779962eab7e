"""``multidigits``: MultiMNIST-style two-digit images from scikit-learn's bundled digits.

After the MultiMNIST construction of Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS 2018, https://arxiv.org/abs/1810.04650): each image holds two overlapping
handwritten digits, one towards the upper-left corner and one towards the lower-right, each shifted
by a small random offset. Task ``left`` classifies the upper-left digit, task ``right`` the
lower-right one (10 classes each).

The source digits are the 1797 8x8 images of :func:`sklearn.datasets.load_digits` (bundled with
scikit-learn, nothing is downloaded), upscaled bilinearly to ``digit_size``. The source digits are
split first (60/20/20, stratified by class), so the train, val and test images are built from
disjoint source digits. Two digits are combined with a pixel-wise maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taskbalance.data.benchmark import (
    BenchmarkSpec,
    SplitArrays,
    check_options,
    register_benchmark,
    split_seeds,
)

__all__ = ["NAME", "TASKS", "generate_multidigits", "source_digit_split"]

NAME = "multidigits"
TASKS = ("left", "right")
SOURCE_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}

DEFAULT_SIZE: dict[str, Any] = {
    "train": 6000,
    "val": 1000,
    "test": 1000,
    "image_size": 20,
    "digit_size": 12,
    "max_shift": 2,
}
TINY_SIZE: dict[str, Any] = {
    "train": 96,
    "val": 48,
    "test": 48,
    "image_size": 16,
    "digit_size": 10,
    "max_shift": 1,
}


def _load_source() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32) / 16.0
    return images, np.asarray(digits.target, dtype=np.int64)


def source_digit_split(seed: int, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of the source digits used by each split (disjoint, stratified by class)."""
    rng = split_seeds(seed, "multidigits/source-split")
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SOURCE_FRACTIONS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_train = int(round(SOURCE_FRACTIONS["train"] * len(idx)))
        n_val = int(round(SOURCE_FRACTIONS["val"] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _upscale(images: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(images)[:, None]
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].clamp_(0.0, 1.0).numpy()


def _paste_max(canvas: np.ndarray, patches: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
    """``canvas[n, top:top+d, left:left+d] = max(canvas, patches[n])`` for every n at once."""
    n, d = patches.shape[0], patches.shape[1]
    offsets = np.arange(d)
    rows = top[:, None, None] + offsets[None, :, None]
    cols = left[:, None, None] + offsets[None, None, :]
    sample = np.arange(n)[:, None, None]
    canvas[sample, rows, cols] = np.maximum(canvas[sample, rows, cols], patches)


def generate_multidigits(seed: int, params: dict[str, Any]) -> dict[str, SplitArrays]:
    """Generate the three splits of ``multidigits`` (see the module docstring)."""
    size, d, shift = params["image_size"], params["digit_size"], params["max_shift"]
    if not (isinstance(d, int) and d >= 4):
        raise ValueError(f"digit_size must be an int >= 4, got {d!r}")
    if not (isinstance(shift, int) and shift >= 0):
        raise ValueError(f"max_shift must be a non-negative int, got {shift!r}")
    if not isinstance(size, int) or size < d + 2 * shift or size > 2 * d + 2 * shift:
        raise ValueError(
            f"image_size must satisfy digit_size + 2*max_shift <= image_size <= "
            f"2*digit_size + 2*max_shift (= {d + 2 * shift}..{2 * d + 2 * shift}) so that the "
            f"two digits overlap and fit; got image_size={size!r}"
        )
    images, labels = _load_source()
    digits = _upscale(images, d)
    pools = source_digit_split(seed, labels)
    out: dict[str, SplitArrays] = {}
    for split, pool in pools.items():
        rng = split_seeds(seed, f"multidigits/{split}")
        n = params[split]
        ids = rng.choice(pool, size=(2, n))  # left and right source digits
        offsets = rng.integers(-shift, shift + 1, size=(4, n))
        canvas = np.zeros((n, size, size), dtype=np.float32)
        base_left, base_right = shift, size - d - shift
        _paste_max(canvas, digits[ids[0]], base_left + offsets[0], base_left + offsets[1])
        _paste_max(canvas, digits[ids[1]], base_right + offsets[2], base_right + offsets[3])
        out[split] = SplitArrays(
            inputs=np.rint(canvas * 255.0).astype(np.uint8)[:, None],
            targets={"left": labels[ids[0]], "right": labels[ids[1]]},
            extras={"source_index": ids.T.copy()},
        )
    return out


def _make_tasks(params: dict[str, Any]) -> list:
    from taskbalance.tasks import classification_task

    return [classification_task("left", 10), classification_task("right", 10)]


def _make_model(params: dict[str, Any], options: dict[str, Any]) -> Any:
    """SmallCNN backbone shared by two classification heads."""
    from taskbalance.data._models import small_cnn_classifier

    opts = check_options(options, {"width": 32, "hidden": 64}, "multidigits.build_model")
    return small_cnn_classifier(
        in_channels=1,
        image_size=(params["image_size"], params["image_size"]),
        heads={"left": 10, "right": 10},
        **opts,
    )


SPEC = register_benchmark(
    BenchmarkSpec(
        name=NAME,
        description="MultiMNIST-style two overlapping digits (left/right classification)",
        version=1,
        default_size=DEFAULT_SIZE,
        tiny_size=TINY_SIZE,
        task_names=TASKS,
        generate=generate_multidigits,
        make_tasks=_make_tasks,
        make_model=_make_model,
        input_shape=lambda p: (1, p["image_size"], p["image_size"]),
    )
)
