"""UPGrad's dual-cone projections (``dual_cone_weights``) against scipy's NNLS at T = 40.

The projection of ``Jᵀy`` onto ``{x : J x ≥ 0}`` is ``Jᵀ(y + μ*)`` with
``μ* = argmin_{μ≥0} ‖Jᵀμ + Jᵀy‖``: scipy's NNLS on ``Jᵀ`` itself (not the Gramian) gives it
independently. ``μ*`` is not unique for rank-deficient J, the projection is: compared there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from taskbalance.balancing.solvers import _lawson_hanson, dual_cone_weights, normalized

T = 40


def jacobians() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(80)
    cases = {
        "random": rng.standard_normal((T, 80)),
        "mostly_aligned": 0.5 * shared + rng.standard_normal((T, 80)),
        "rank_5": rng.standard_normal((T, 5)) @ rng.standard_normal((5, 80)),
    }
    J = rng.standard_normal((T, 80))
    J[1] = J[0]  # identical tasks
    J[2] = -J[3]  # opposite tasks
    J[4] = 0.0  # a zero gradient
    J[5] = 1e-6 * J[6]  # colinear, far apart in scale
    cases["degenerate"] = J
    return cases


def nnls_projections(J: np.ndarray) -> np.ndarray:
    """Rows: ``π(g_i) = Jᵀ(e_i + μ_i)`` with ``μ_i`` from NNLS on ``Jᵀ``."""
    out = []
    for i in range(J.shape[0]):
        mu, _ = nnls(J.T, -J[i], maxiter=50 * J.shape[0])
        out.append(J[i] + mu @ J)
    return np.array(out)


@pytest.mark.parametrize("case", ["random", "mostly_aligned", "rank_5", "degenerate"])
def test_projections_match_nnls_and_kkt(case):
    J = jacobians()[case]
    G = normalized(torch.from_numpy(J @ J.T))
    scale = np.sqrt(np.abs(J @ J.T).max())
    Jn = J / scale  # the Jacobian of the normalised Gramian
    V = dual_cone_weights(G, torch.eye(T, dtype=torch.float64)).numpy()
    mu = V - np.eye(T)
    assert (mu >= 0).all()
    # Each projection lies in the dual cone (g_t · π ≥ 0) ...
    slopes = V @ G.numpy()
    assert slopes.min() >= -1e-10
    # ... with complementary slackness (μ_t > 0 only where g_t · π = 0) ...
    assert (mu * slopes).max() <= 1e-10
    # ... and equals NNLS's projection.
    np.testing.assert_allclose(V @ Jn, nnls_projections(Jn), atol=1e-9, rtol=0)


@pytest.mark.parametrize("case", ["random", "degenerate"])
def test_the_lawson_hanson_fallback_matches_too(case):
    """Rows that principal pivoting leaves open are finished by Lawson-Hanson: same answer."""
    J = jacobians()[case]
    G = normalized(torch.from_numpy(J @ J.T)).numpy()
    Jn = J / np.sqrt(np.abs(J @ J.T).max())
    mu = _lawson_hanson(G, G.copy(), tol=1e-12, ridge=1e-13 * T, max_iter=3 * T + 10)
    np.testing.assert_allclose((np.eye(T) + mu) @ Jn, nnls_projections(Jn), atol=1e-9, rtol=0)


def test_projections_keep_the_device_and_rows():
    G = torch.eye(3, dtype=torch.float64)
    G[0, 1] = G[1, 0] = -0.5
    Y = torch.eye(3, dtype=torch.float64)[:2]
    V = dual_cone_weights(G, Y)
    assert V.shape == (2, 3) and V.device == Y.device
    # Two unit gradients at 120°: each projection adds half of the other (g_0 + g_1/2 ⊥ g_1).
    torch.testing.assert_close(
        V, torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0]], dtype=torch.float64)
    )
