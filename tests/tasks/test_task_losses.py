"""Masked losses against independent numpy computations."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch

from taskbalance.tasks import losses

RNG = np.random.default_rng(0)


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def _t(x: np.ndarray, **kw) -> torch.Tensor:
    return torch.tensor(x, **kw)


# ----------------------------------------------------------------------------- classification


def test_cross_entropy_matches_numpy_with_sample_mask() -> None:
    z = RNG.normal(size=(6, 4))
    y = RNG.integers(0, 4, size=6)
    mask = np.array([True, False, True, True, False, True])
    expected = -_log_softmax(z, 1)[np.arange(6), y][mask].mean()
    got = losses.cross_entropy(_t(z), _t(y), _t(mask))
    assert got is not None
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # no mask = every sample
    full = losses.cross_entropy(_t(z), _t(y))
    assert full is not None
    assert float(full) == pytest.approx(-_log_softmax(z, 1)[np.arange(6), y].mean(), rel=1e-12)


def test_cross_entropy_none_when_nothing_labelled() -> None:
    z = torch.randn(3, 5)
    y = torch.zeros(3, dtype=torch.long)
    assert losses.cross_entropy(z, y, torch.zeros(3, dtype=torch.bool)) is None
    # ignore_index that covers every sample
    assert losses.cross_entropy(z, torch.full((3,), -1), ignore_index=-1) is None


def test_cross_entropy_masked_sample_gets_no_gradient() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = losses.cross_entropy(z, y, torch.tensor([True, False, True, False]))
    assert loss is not None
    loss.backward()
    assert z.grad is not None
    assert torch.count_nonzero(z.grad[1]) == 0 and torch.count_nonzero(z.grad[3]) == 0
    assert torch.count_nonzero(z.grad[0]) > 0


def test_pixel_cross_entropy_ignores_255_and_averages_over_valid_pixels() -> None:
    z = RNG.normal(size=(2, 3, 4, 5))
    y = RNG.integers(0, 3, size=(2, 4, 5))
    y[0, :2] = 255
    y[1, 3, 4] = 255
    logp = _log_softmax(z, 1)
    valid = y != 255
    b, h, w = np.nonzero(valid)
    expected = -logp[b, y[valid], h, w].mean()
    got = losses.pixel_cross_entropy(_t(z), _t(y))
    assert got is not None
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # the per-sample mask drops sample 1 entirely
    valid0 = valid.copy()
    valid0[1] = False
    b, h, w = np.nonzero(valid0)
    expected0 = -logp[b, y[valid0], h, w].mean()
    got0 = losses.pixel_cross_entropy(_t(z), _t(y), _t(np.array([True, False])))
    assert got0 is not None
    assert float(got0) == pytest.approx(expected0, rel=1e-12)


def test_pixel_cross_entropy_all_ignored_is_none() -> None:
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    y = torch.full((1, 2, 2), 255)
    assert losses.pixel_cross_entropy(z, y) is None


def test_binary_cross_entropy_matches_numpy_with_ignore_value() -> None:
    z = RNG.normal(size=(5, 3))
    y = RNG.integers(0, 2, size=(5, 3)).astype(float)
    y[2, 1] = -1.0
    mask = np.array([True, True, True, False, True])
    p = 1 / (1 + np.exp(-z))
    elem = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    keep = (y != -1) & mask[:, None]
    got = losses.binary_cross_entropy(_t(z), _t(y), _t(mask), ignore_value=-1.0)
    assert got is not None
    assert float(got) == pytest.approx(elem[keep].mean(), rel=1e-10)


# --------------------------------------------------------------------------------- regression


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss"])
def test_regression_losses_match_numpy(name: str) -> None:
    pred = RNG.normal(size=(7, 2))
    target = RNG.normal(size=(7, 2))
    mask = np.array([1, 0, 1, 1, 0, 0, 1], dtype=bool)
    diff = (pred - target)[mask]
    expected = np.abs(diff).mean() if name == "l1_loss" else (diff**2).mean()
    got = getattr(losses, name)(_t(pred), _t(target), _t(mask))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert getattr(losses, name)(_t(pred), _t(target), _t(np.zeros(7, dtype=bool))) is None


def test_regression_single_sample_batch() -> None:
    got = losses.l1_loss(torch.tensor([2.5]), torch.tensor([1.0]), torch.tensor([True]))
    assert got is not None
    assert float(got) == pytest.approx(1.5)


# ----------------------------------------------------------------------------- dense geometry


def test_depth_l1_uses_only_positive_target_pixels() -> None:
    pred = RNG.uniform(0.5, 5, size=(3, 1, 4, 4))
    target = RNG.uniform(0.5, 5, size=(3, 1, 4, 4))
    target[RNG.uniform(size=target.shape) < 0.4] = 0.0
    mask = np.array([True, False, True])
    valid = (target > 0) & mask[:, None, None, None]
    expected = np.abs(pred - target)[valid].mean()
    got = losses.depth_l1_loss(_t(pred), _t(target), _t(mask))
    assert got is not None
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert losses.depth_l1_loss(_t(pred), _t(np.zeros_like(target))) is None


def test_normal_cosine_loss_matches_numpy_and_skips_zero_normals() -> None:
    pred = RNG.normal(size=(2, 3, 3, 4))
    target = RNG.normal(size=(2, 3, 3, 4))
    target[0, :, 1, :] = 0.0  # a row of pixels without normal
    pn = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    tn = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-300)
    valid = np.linalg.norm(target, axis=1) > 0
    expected = (1 - (pn * tn).sum(axis=1))[valid].mean()
    got = losses.normal_cosine_loss(_t(pred), _t(target))
    assert got is not None
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # scale invariance of the target
    got_scaled = losses.normal_cosine_loss(_t(pred), _t(target * 7.0))
    assert got_scaled is not None
    assert float(got_scaled) == pytest.approx(expected, rel=1e-12)
    assert losses.normal_cosine_loss(_t(pred), _t(np.zeros_like(target))) is None


def test_normal_cosine_loss_gradient_is_finite_with_zero_targets() -> None:
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.zeros(1, 3, 2, 2)
    target[0, 2, 0, 0] = 1.0  # one valid pixel
    loss = losses.normal_cosine_loss(pred, target)
    assert loss is not None
    loss.backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all()
    assert torch.count_nonzero(pred.grad[0, :, 1, 1]) == 0


def test_dice_loss_matches_numpy() -> None:
    z = RNG.normal(size=(2, 3, 4, 4))
    y = RNG.integers(0, 3, size=(2, 4, 4))
    y[1, 0] = 255
    p = np.exp(_log_softmax(z, 1))
    valid = y != 255
    pv = np.moveaxis(p, 1, -1)[valid]  # [N, C]
    g = np.eye(3)[y[valid]]
    dice = (2 * (pv * g).sum(0) + 1.0) / (pv.sum(0) + g.sum(0) + 1.0)
    expected = 1 - dice.mean()
    got = losses.dice_loss(_t(z), _t(y))
    assert got is not None
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert losses.dice_loss(_t(z), _t(np.full_like(y, 255))) is None


def test_dice_loss_is_small_for_a_confident_correct_prediction() -> None:
    y = torch.tensor([[[0, 1], [2, 1]]])
    z = 50.0 * torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).double()
    loss = losses.dice_loss(z, y)
    assert loss is not None and float(loss) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------ TTNet


def test_gaussian_1d_target_formula_and_normalisation() -> None:
    coords = torch.tensor([2.0, 0.0, 6.5])
    t = losses.gaussian_1d_target(coords, 8, sigma=1.5)
    i = np.arange(8)
    expected = np.exp(-((i[None, :] - np.array([[2.0], [0.0], [6.5]])) ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-6)
    assert t[0].argmax() == 2 and float(t[0, 2]) == pytest.approx(1.0)
    tn = losses.gaussian_1d_target(coords, 8, sigma=1.5, normalize=True)
    np.testing.assert_allclose(tn.sum(dim=1).numpy(), np.ones(3), rtol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        losses.gaussian_1d_target(coords, 8, sigma=0.0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_ball_position_loss_matches_numpy(activation: Literal["softmax", "sigmoid"]) -> None:
    width, height, sigma = 10, 6, 1.2
    z = RNG.normal(size=(4, width + height))
    xy = np.array([[3.0, 2.0], [9.0, 0.0], [0.0, 5.0], [4.5, 2.5]])
    mask = np.array([True, True, False, True])
    tx = np.exp(-((np.arange(width)[None] - xy[:, :1]) ** 2) / (2 * sigma**2))
    ty = np.exp(-((np.arange(height)[None] - xy[:, 1:]) ** 2) / (2 * sigma**2))
    zx, zy = z[:, :width], z[:, width:]
    if activation == "softmax":
        lx = -(tx * _log_softmax(zx, 1)).mean(1)
        ly = -(ty * _log_softmax(zy, 1)).mean(1)
    else:
        px, py = 1 / (1 + np.exp(-zx)), 1 / (1 + np.exp(-zy))
        lx = -(tx * np.log(px) + (1 - tx) * np.log(1 - px)).mean(1)
        ly = -(ty * np.log(py) + (1 - ty) * np.log(1 - py)).mean(1)
    expected = (lx + ly)[mask].mean()
    got = losses.ball_position_loss(
        _t(z), _t(xy), _t(mask), width=width, height=height, sigma=sigma, activation=activation
    )
    assert got is not None
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_ball_position_softmax_loss_is_minimal_at_the_smoothed_target() -> None:
    # -Σ t log p over the simplex is minimised by p = t / Σt, i.e. logits log t (+ const)
    width, height, sigma = 12, 8, 1.0
    xy = torch.tensor([[5.0, 3.0]], dtype=torch.float64)
    tx = losses.gaussian_1d_target(xy[:, 0], width, sigma)
    ty = losses.gaussian_1d_target(xy[:, 1], height, sigma)
    z = torch.cat([tx.log(), ty.log()], dim=1).requires_grad_(True)
    loss = losses.ball_position_loss(z, xy, width=width, height=height, sigma=sigma)
    assert loss is not None
    loss.backward()
    assert z.grad is not None
    assert float(z.grad.abs().max()) < 1e-12
    perturbed = (z + 0.1 * torch.randn_like(z)).detach()
    worse = losses.ball_position_loss(perturbed, xy, width=width, height=height, sigma=sigma)
    assert loss is not None
    assert worse is not None
    assert float(worse) > float(loss.detach())


def test_ball_position_loss_bad_width_and_empty_mask() -> None:
    z = torch.randn(2, 10)
    xy = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="width \\+ height"):
        losses.ball_position_loss(z, xy, width=5, height=6)
    assert losses.ball_position_loss(z, xy, torch.tensor([False, False]), width=5, height=5) is None


def test_select_labelled_rejects_a_per_pixel_mask() -> None:
    with pytest.raises(ValueError, match="one bool per sample"):
        losses.l1_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
