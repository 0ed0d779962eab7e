"""Accumulated metrics against independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskbalance.tasks import metrics as M

RNG = np.random.default_rng(1)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x)


def _feed(metric: M.Metric, pred: np.ndarray, target: np.ndarray, splits: list[int]) -> dict:
    """Update ``metric`` with consecutive chunks of sizes ``splits`` and compute."""
    metric.reset()
    start = 0
    for size in splits:
        metric.update(_t(pred[start : start + size]), _t(target[start : start + size]))
        start += size
    assert start == len(pred)
    return metric.compute()


# -------------------------------------------------------------------- classification/regression


def test_accuracy_matches_numpy_and_is_batch_split_invariant() -> None:
    z = RNG.normal(size=(23, 5))
    y = RNG.integers(0, 5, size=23)
    expected = float((z.argmax(1) == y).mean())
    metric = M.Accuracy(5)
    for splits in ([23], [1] * 23, [10, 1, 12]):
        assert _feed(metric, z, y, splits)["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_accuracy_masked_samples_excluded_and_single_sample() -> None:
    metric = M.Accuracy(3)
    z = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    # sample 1 is wrong but masked out; sample 2 is wrong
    metric.update(z, torch.tensor([0, 2, 1]), torch.tensor([True, False, True]))
    assert metric.compute()["accuracy"] == pytest.approx(0.5)
    metric.update(z[:1], torch.tensor([0]))  # batch of one
    assert metric.compute()["accuracy"] == pytest.approx(2 / 3)


def test_binary_accuracy_uses_logit_sign_even_for_logits_inside_unit_interval() -> None:
    # logits 0.3 and 0.7 are both positive => both predict class 1 (a naive "probability" reading
    # with threshold 0.5 would call 0.3 class 0)
    metric = M.BinaryAccuracyMetric()
    metric.update(torch.tensor([0.3, 0.7, -0.2]), torch.tensor([1.0, 1.0, 0.0]))
    assert metric.compute()["accuracy"] == pytest.approx(1.0)
    z = RNG.normal(size=(40, 3))
    y = RNG.integers(0, 2, size=(40, 3)).astype(float)
    expected = float(((z > 0) == (y > 0.5)).mean())
    assert _feed(metric, z, y, [7, 33])["accuracy"] == pytest.approx(expected)


def test_regression_errors_match_numpy_over_all_elements() -> None:
    pred = RNG.normal(size=(31, 3))
    target = RNG.normal(size=(31, 3))
    diff = pred - target
    metric = M.RegressionErrors()
    for splits in ([31], [1, 30], [5] * 6 + [1]):
        out = _feed(metric, pred, target, splits)
        assert out["mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-12)
        assert out["rmse"] == pytest.approx(np.sqrt((diff**2).mean()), rel=1e-12)


# ------------------------------------------------------------------------------- segmentation


def _np_confusion(pred: np.ndarray, target: np.ndarray, c: int, ignore: int) -> np.ndarray:
    keep = target != ignore
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (target[keep], pred[keep]), 1)
    return conf


def _np_miou(conf: np.ndarray) -> tuple[float, float]:
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()), float(tp.sum() / conf.sum())


def test_segmentation_matches_numpy_and_accumulates() -> None:
    c = 6
    z = RNG.normal(size=(7, c, 5, 6))
    y = RNG.integers(0, c - 1, size=(7, 5, 6))  # class 5 never in the ground truth
    y[RNG.uniform(size=y.shape) < 0.2] = 255
    conf = _np_confusion(z.argmax(1), y, c, 255)
    miou, acc = _np_miou(conf)
    metric = M.SegmentationMetrics(c)
    for splits in ([7], [1] * 7, [3, 4]):
        out = _feed(metric, z, y, splits)
        assert out["miou"] == pytest.approx(miou, rel=1e-12)
        assert out["pixel_acc"] == pytest.approx(acc, rel=1e-12)
    np.testing.assert_array_equal(metric.confusion.numpy(), conf)


def test_segmentation_hand_made_case_excludes_absent_classes() -> None:
    # 4 classes; class 3 appears in neither prediction nor truth.
    # truth: 0 0 1 1 2 255 ; pred: 0 1 1 1 0 2
    # class 0: TP 1, FP 1 (pixel 4), FN 1 (pixel 1) -> IoU 1/3
    # class 1: TP 2, FP 1 (pixel 1), FN 0           -> IoU 2/3
    # class 2: TP 0, FP 0 (pixel 5 is ignored), FN 1 -> IoU 0
    # mIoU = (1/3 + 2/3 + 0) / 3 = 1/3 ; pixel acc = 3 / 5
    truth = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    metric = M.SegmentationMetrics(4)
    metric.update(pred, truth)
    out = metric.compute()
    assert out["miou"] == pytest.approx(1 / 3)
    assert out["pixel_acc"] == pytest.approx(3 / 5)


def test_segmentation_all_pixels_ignored_raises() -> None:
    metric = M.SegmentationMetrics(3)
    metric.update(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255))
    with pytest.raises(M.EmptyMetricError, match="no valid"):
        metric.compute()


# ---------------------------------------------------------------------------------- depth


def test_depth_errors_accumulate_over_pixels_not_batches() -> None:
    pred = RNG.uniform(0.5, 4.0, size=(6, 1, 4, 4))
    target = RNG.uniform(0.5, 4.0, size=(6, 1, 4, 4))
    target[:3][RNG.uniform(size=(3, 1, 4, 4)) < 0.8] = 0.0  # first half: few valid pixels
    valid = target > 0
    err = np.abs(pred - target)[valid]
    expected_abs = err.mean()
    expected_rel = (err / target[valid]).mean()
    metric = M.DepthErrors()
    out = _feed(metric, pred, target, [3, 3])
    assert out["abs_err"] == pytest.approx(expected_abs, rel=1e-12)
    assert out["rel_err"] == pytest.approx(expected_rel, rel=1e-12)
    # a mean of per-batch means would differ (the batches hold different numbers of pixels)
    per_batch = np.mean(
        [np.abs(pred - target)[:3][valid[:3]].mean(), np.abs(pred - target)[3:][valid[3:]].mean()]
    )
    assert abs(per_batch - expected_abs) > 1e-6
    assert _feed(metric, pred, target, [1] * 6)["abs_err"] == pytest.approx(expected_abs, rel=1e-12)


def test_depth_errors_half_precision_prediction_keeps_float32_targets() -> None:
    # a target of 1e-8 is valid (> 0) although it underflows to 0 in float16; errors are taken
    # in float64 against the float32 target, not against a target rounded to float16
    pred = torch.tensor([[[[1.0, 2.0, 0.5]]]], dtype=torch.float16)
    target = torch.tensor([[[[1e-8, 2.001, 0.0]]]], dtype=torch.float32)
    t = target.double().numpy().reshape(-1)[:2]
    p = pred.double().numpy().reshape(-1)[:2]
    err = np.abs(p - t)
    metric = M.DepthErrors()
    metric.update(pred, target)
    out = metric.compute()
    assert out["abs_err"] == pytest.approx(err.mean(), rel=1e-12)
    assert out["rel_err"] == pytest.approx((err / t).mean(), rel=1e-12)


def test_depth_no_valid_pixel_raises() -> None:
    metric = M.DepthErrors()
    metric.update(torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    with pytest.raises(M.EmptyMetricError, match="depth"):
        metric.compute()


# -------------------------------------------------------------------------------- normals


def _np_angles(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    pn = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    tn = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-300)
    valid = np.linalg.norm(target, axis=1) > 0
    return np.degrees(np.arccos(np.clip((pn * tn).sum(1), -1, 1)))[valid]


@pytest.mark.parametrize("exact", [True, False])
def test_normal_errors_match_numpy(exact: bool) -> None:
    pred = RNG.normal(size=(5, 3, 6, 7))
    target = pred + 0.6 * RNG.normal(size=pred.shape)  # angles spread over 0..90+
    target[:, :, 0, :] = 0.0
    angles = _np_angles(pred, target)
    metric = M.NormalErrors(exact_median=exact)
    for splits in ([5], [1, 2, 2]):
        out = _feed(metric, pred, target, splits)
        assert out["mean_angle"] == pytest.approx(angles.mean(), rel=1e-9)
        tol = 1e-6 if exact else 5e-4 + 1e-6
        assert abs(out["median_angle"] - np.median(angles)) <= tol
        for t in (11.25, 22.5, 30):
            assert out[f"within_{t:g}"] == pytest.approx(float((angles < t).mean()))


def test_normal_errors_hand_made_angles_and_even_median() -> None:
    # target (0, 0, 1); predictions at 0, 10, 20, 45 degrees from it in the x-z plane, one pixel
    # without normal. Median of {0, 10, 20, 45} = (10 + 20) / 2 = 15; mean = 75 / 4 = 18.75.
    degs = [0.0, 10.0, 20.0, 45.0, 60.0]
    rad = np.radians(degs)
    pred = np.stack([np.sin(rad), np.zeros(5), np.cos(rad)])[None, :, :, None]  # [1, 3, 5, 1]
    target = np.zeros_like(pred)
    target[0, 2, :4, 0] = 1.0  # the 60-degree pixel has no target normal
    for exact in (True, False):
        metric = M.NormalErrors(exact_median=exact)
        metric.update(_t(pred), _t(target))
        out = metric.compute()
        assert out["mean_angle"] == pytest.approx(18.75, abs=1e-9)
        assert out["median_angle"] == pytest.approx(15.0, abs=1e-9 if exact else 5e-4)
        assert out["within_11.25"] == pytest.approx(0.5)
        assert out["within_22.5"] == pytest.approx(0.75)
        assert out["within_30"] == pytest.approx(0.75)


def test_normal_errors_small_angles_are_accurate_and_zero_prediction_is_90() -> None:
    # 0.01 degree: acos in float32 would be far off; atan2 is exact to float precision
    a = np.radians(0.01)
    pred = torch.tensor([[[np.sin(a)], [0.0], [np.cos(a)]]], dtype=torch.float32)[..., None]
    target = torch.tensor([[[0.0], [0.0], [1.0]]], dtype=torch.float32)[..., None]
    assert float(M.NormalErrors.angles(pred, target)) == pytest.approx(0.01, rel=1e-4)
    assert float(M.NormalErrors.angles(torch.zeros_like(pred), target)) == pytest.approx(90.0)


def test_normal_errors_empty_raises_and_reset_clears() -> None:
    metric = M.NormalErrors()
    metric.update(torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(M.EmptyMetricError, match="normal"):
        metric.compute()
    metric.update(
        torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]]), torch.tensor([[[[0.0]], [[1.0]], [[0.0]]]])
    )
    assert metric.compute()["mean_angle"] == pytest.approx(90.0)
    metric.reset()
    with pytest.raises(M.EmptyMetricError):
        metric.compute()


# ------------------------------------------------------------------------------------ TTNet


def test_ball_rmse_argmax_hand_made() -> None:
    width, height = 8, 5
    z = torch.full((2, width + height), -10.0)
    z[0, 3] = z[0, width + 1] = 10.0  # predicts (3, 1)
    z[1, 7] = z[1, width + 4] = 10.0  # predicts (7, 4)
    target = torch.tensor([[0.0, 5.0], [7.0, 4.0]])
    # squared distances: (3-0)² + (1-5)² = 25 and 0 -> RMSE = sqrt(25 / 2)
    metric = M.BallPositionError(width, height)
    metric.update(z, target)
    assert metric.compute()["rmse_px"] == pytest.approx(np.sqrt(12.5))


def test_ball_rmse_expectation_matches_numpy_and_accumulates() -> None:
    width, height = 9, 4
    z = RNG.normal(size=(10, width + height))
    xy = RNG.uniform(0, 4, size=(10, 2))
    px = np.exp(_ls(z[:, :width]))
    py = np.exp(_ls(z[:, width:]))
    pos = np.stack([px @ np.arange(width), py @ np.arange(height)], 1)
    expected = np.sqrt(((pos - xy) ** 2).sum(1).mean())
    metric = M.BallPositionError(width, height, decode="expectation")
    for splits in ([10], [1, 9], [4, 6]):
        assert _feed(metric, z, xy, splits)["rmse_px"] == pytest.approx(expected, rel=1e-10)


def _ls(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def test_event_spotting_hand_made() -> None:
    # classes: 0 = no event, 1 = bounce, 2 = net
    z = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0], [0, 3.0, 0]])
    y = torch.tensor([0, 1, 1, 1, 2])
    # event frames: 1 (correct), 2 (wrong), 3 (wrong), 4 (wrong) -> event_acc 1/4
    # all frames: frame 0 and frame 1 correct -> frame_acc 2/5
    metric = M.EventSpotting(3, background_class=0)
    metric.update(z[:2], y[:2])
    metric.update(z[2:], y[2:])
    out = metric.compute()
    assert out == {"event_acc": pytest.approx(0.25), "frame_acc": pytest.approx(0.4)}
    without = M.EventSpotting(3)
    without.update(z, y)
    assert without.compute() == {"event_acc": pytest.approx(0.4)}


def test_event_spotting_without_event_frames_raises() -> None:
    metric = M.EventSpotting(2, background_class=0)
    metric.update(torch.randn(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(M.EmptyMetricError, match="no frame with an event"):
        metric.compute()


@pytest.mark.parametrize(
    "metric",
    [
        M.Accuracy(3),
        M.RegressionErrors(),
        M.SegmentationMetrics(3),
        M.DepthErrors(),
        M.NormalErrors(),
        M.BallPositionError(4, 4),
        M.EventSpotting(3),
        M.BinaryAccuracyMetric(),
    ],
    ids=lambda m: type(m).__name__,
)
def test_compute_before_any_update_raises(metric: M.Metric) -> None:
    with pytest.raises(M.EmptyMetricError, match="reset"):
        metric.compute()


def test_fully_masked_batch_counts_nothing() -> None:
    metric = M.RegressionErrors()
    metric.update(torch.ones(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(M.EmptyMetricError):
        metric.compute()
