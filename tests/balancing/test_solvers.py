"""The Gramian solvers: exact min-norm weights against independent solvers, KKT, degeneracies."""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from taskbalance.balancing.solvers import (
    combine,
    gramian,
    min_norm_weights,
    normalized,
    random_orders,
)

sys.path.insert(0, os.path.dirname(__file__))
from _jacobians import scaled_jacobian  # noqa: E402

METHODS = ("enumerate", "wolfe")


# tiny n x n work: intra-op threads only add overhead (and stall on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def kkt_violation(G: torch.Tensor, w: torch.Tensor) -> float:
    """Largest violation of the min-norm KKT conditions, relative to max diag(G)."""
    G = G.double()
    w = w.double()
    scale = float(G.diagonal().max()) or 1.0
    Gw = G @ w
    obj = w @ Gw
    below = float((obj - Gw).clamp_min(0).max())
    support = w > 1e-9
    on_support = float((Gw - obj)[support].abs().max())
    simplex = float((w.sum() - 1).abs()) + float((-w).clamp_min(0).max())
    return max(below, on_support) / scale + simplex


def two_task_closed_form(g1: np.ndarray, g2: np.ndarray) -> float:
    diff = g1 - g2
    denom = diff @ diff
    if denom == 0:
        return 0.5
    return float(np.clip((g2 - g1) @ g2 / denom, 0.0, 1.0))


@pytest.mark.parametrize("method", ("auto", *METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_tasks_closed_form(method, dtype):
    rng = np.random.default_rng(0)
    for _ in range(50):
        g1, g2 = rng.standard_normal((2, 7))
        if rng.random() < 0.5:
            g2 = -0.4 * g1 + 0.3 * g2
        w1 = two_task_closed_form(g1, g2)
        G = torch.tensor(np.stack([g1, g2]) @ np.stack([g1, g2]).T, dtype=dtype)
        w = min_norm_weights(G, method)
        assert w.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        assert w[0].item() == pytest.approx(w1, abs=tol)
        assert w.sum().item() == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("method", METHODS)
def test_three_tasks_against_slsqp(method):
    rng = np.random.default_rng(1)
    for _ in range(30):
        J = rng.standard_normal((3, 5))
        if rng.random() < 0.5:
            J[2] = -J[0] - 0.5 * J[1]
        G = J @ J.T
        res = minimize(
            lambda w, G=G: w @ G @ w,
            np.full(3, 1 / 3),
            jac=lambda w, G=G: 2 * G @ w,
            bounds=[(0, 1)] * 3,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        w = min_norm_weights(torch.tensor(G), method).numpy()
        assert w @ G @ w <= res.fun + 1e-9
        d_ours, d_ref = w @ J, res.x @ J
        assert np.linalg.norm(d_ours - d_ref) <= 1e-5 * np.linalg.norm(J)


def test_three_tasks_against_grid():
    rng = np.random.default_rng(2)
    steps = 400
    a = np.linspace(0, 1, steps + 1)
    A, B = np.meshgrid(a, a, indexing="ij")
    keep = A + B <= 1
    W = np.stack([A[keep], B[keep], 1 - A[keep] - B[keep]], axis=1)
    for _ in range(10):
        J = rng.standard_normal((3, 4))
        G = J @ J.T
        grid_best = np.einsum("si,ij,sj->s", W, G, W).min()
        w = min_norm_weights(torch.tensor(G)).numpy()
        ours = w @ G @ w
        assert ours <= grid_best + 1e-12
        assert ours >= grid_best - 2 * np.abs(G).max() / steps  # the grid is that fine


@pytest.mark.parametrize("method", METHODS)
def test_kkt_over_sampled_matrices(method):
    rng = np.random.default_rng(3)
    for k in range(200 if method == "enumerate" else 100):
        J = torch.tensor(scaled_jacobian(rng, k))
        G = gramian(J)
        w = min_norm_weights(G, method)
        assert torch.isfinite(w).all()
        assert kkt_violation(normalized(G), w) < 1e-9, k


def test_enumerate_and_wolfe_agree():
    rng = np.random.default_rng(4)
    for k in range(60):
        J = torch.tensor(scaled_jacobian(rng, k))
        J = J / J.abs().max().clamp_min(1e-300)
        G = gramian(J)
        d1 = min_norm_weights(G, "enumerate") @ J
        d2 = min_norm_weights(G, "wolfe") @ J
        assert torch.allclose(d1, d2, atol=1e-6), k


def test_large_n_uses_active_set():
    rng = np.random.default_rng(5)
    for n in (11, 16, 30):
        J = torch.tensor(rng.standard_normal((n, 20)))
        J[:3] *= -1
        G = gramian(J)
        w = min_norm_weights(G)
        assert kkt_violation(normalized(G), w) < 1e-9


def test_degenerate_cases():
    g = torch.randn(5, dtype=torch.float64)
    identical = torch.stack([g, g, g])
    third = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert torch.allclose(min_norm_weights(gramian(identical)), third)
    zero = torch.zeros(4, 4, dtype=torch.float64)
    assert torch.allclose(min_norm_weights(zero), torch.full((4,), 0.25, dtype=torch.float64))
    half = torch.full((2,), 0.5, dtype=torch.float64)
    assert torch.allclose(min_norm_weights(gramian(torch.stack([g, g]))), half)
    opposite = torch.stack([g, -g])
    w = min_norm_weights(gramian(opposite))
    assert torch.allclose(w, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with_zero = torch.stack([g, torch.zeros(5, dtype=torch.float64), 2 * g])
    d = combine(min_norm_weights(gramian(with_zero)), with_zero)
    assert d.norm() < 1e-9 * g.norm()


def test_permutation_equivariance():
    rng = np.random.default_rng(6)
    for _ in range(20):
        n = int(rng.integers(2, 7))
        J = torch.tensor(rng.standard_normal((n, 8)))
        perm = torch.randperm(n)
        w = min_norm_weights(gramian(J))
        assert torch.allclose(min_norm_weights(gramian(J[perm])), w[perm], atol=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        min_norm_weights(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="square"):
        min_norm_weights(torch.zeros(0, 0))
    with pytest.raises(ValueError, match="'fw'"):
        min_norm_weights(torch.eye(2), method="fw")
    with pytest.raises(ValueError, match="shape"):
        gramian(torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gramian_scales(dtype):
    rng = np.random.default_rng(7)
    for exponent in (-15, -5, 0, 5, 15):
        J = rng.standard_normal((3, 40)) * 10.0**exponent
        J[1] *= 10.0 ** (-exponent)  # mixed scales within one matrix
        Jt = torch.tensor(J, dtype=dtype)
        G = gramian(Jt)
        assert G.dtype == torch.float64
        ref = Jt.double().numpy() @ Jt.double().numpy().T
        norms = np.sqrt(np.diag(ref))
        err = np.abs(G.numpy() - ref) / np.outer(norms, norms)  # relative to ‖g_i‖‖g_j‖
        assert err.max() < (1e-6 if dtype == torch.float32 else 1e-14)
    assert torch.equal(gramian(torch.zeros(2, 3)), torch.zeros(2, 2, dtype=torch.float64))
    assert gramian(torch.zeros(2, 0)).shape == (2, 2)


def test_random_orders():
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = random_orders(5, g1, torch.device("cpu"))
    b = random_orders(5, g2, torch.device("cpu"))
    assert torch.equal(a, b)
    assert a.shape == (5, 4)
    for i, row in enumerate(a.tolist()):
        assert sorted(row) == [j for j in range(5) if j != i]
    seen = {tuple(random_orders(3, g1, torch.device("cpu"))[0].tolist()) for _ in range(50)}
    assert seen == set(itertools.permutations([1, 2]))
