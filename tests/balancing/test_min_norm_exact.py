"""MGDA's min-norm point is exact for row norms spread over many orders of magnitude (issue 9).

Two independent checks of ``min_norm_weights``:

* the KKT conditions of ``min ‖Σ w_t g_t‖², w ≥ 0, Σ w = 1`` evaluated in 80-digit arithmetic
  (mpmath) from the rows themselves: ``g_t·d ≥ ‖d‖²`` for every t and ``= ‖d‖²`` where
  ``w_t > 0``, relative to ``‖g_t‖‖d‖`` (a row whose whole share ``w_t‖g_t‖`` of d is below
  the tolerance counts as off the support);
* an independent exact QP: every face of the simplex enumerated, the min-norm point of each
  face's affine hull found by column-equilibrated least squares on the rows (not the Gramian),
  the best feasible one kept; for T = 40 scipy's NNLS on the equivalent problem
  ``min_{u ≥ 0} ‖Jᵀu‖² + (1 − Σu)²`` (then ``w = u/Σu``).
"""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import taskbalance as tb
from taskbalance.balancing.solvers import gramian, min_norm_weights

KKT_TOL = 1e-9


# tiny n x n work: intra-op threads only add overhead (and stall on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def exact_kkt(J: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(relative KKT residual, ‖d‖ / Σ_t w_t‖g_t‖) of weights ``w``, in 80-digit arithmetic."""
    with mpmath.workdps(80):
        n, P = J.shape
        rows = [[mpmath.mpf(float(x)) for x in r] for r in J]
        wm = [mpmath.mpf(float(x)) for x in w]
        d = [mpmath.fsum(wm[t] * rows[t][p] for t in range(n)) for p in range(P)]
        dd = mpmath.fsum(x * x for x in d)
        nd = mpmath.sqrt(dd)
        norms = [mpmath.sqrt(mpmath.fsum(x * x for x in r)) for r in rows]
        share = [abs(wm[t]) * norms[t] for t in range(n)]
        total = mpmath.fsum(share)
        if nd == 0:
            return 0.0, 0.0
        worst = mpmath.mpf(0)
        for t in range(n):
            if norms[t] == 0:
                continue
            r = mpmath.fsum(rows[t][p] * d[p] for p in range(P)) - dd
            worst = max(worst, -r / (norms[t] * nd))  # g_t·d ≥ ‖d‖²
            worst = max(worst, min(abs(r) / norms[t], share[t]) / nd)  # = ‖d‖² on the support
        return float(worst), float(nd / total)


def enumerate_faces(J: np.ndarray) -> np.ndarray:
    """Exact min-norm weights by enumerating faces (least squares on the rows, float64)."""
    n = J.shape[0]
    norms = np.linalg.norm(J, axis=1)
    best_w, best = None, np.inf
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            base = min(S, key=lambda t: norms[t])  # the largest weight: no 1 − Σ cancellation
            rest = [t for t in S if t != base]
            w = np.zeros(n)
            w[base] = 1.0
            if rest:
                A = (J[rest] - J[base]).T
                cn = np.linalg.norm(A, axis=0)
                if (cn == 0).any():
                    continue
                c = np.linalg.lstsq(A / cn, -J[base], rcond=None)[0] / cn
                w[rest] = c
                w[base] = 1.0 - c.sum()
            if (w < -1e-14).any():
                continue
            w = np.clip(w, 0, None) / np.clip(w, 0, None).sum()
            v = float(np.linalg.norm(w @ J))
            if v < best:
                best, best_w = v, w
    assert best_w is not None
    return best_w


def nnls_weights(J: np.ndarray) -> np.ndarray:
    s = np.linalg.norm(J, axis=1)
    s = np.where(s > 0, s, 1.0)
    A = np.vstack([(J / s[:, None]).T, (1.0 / s)[None, :]])
    rhs = np.zeros(A.shape[0])
    rhs[-1] = 1.0
    u = nnls(A, rhs, maxiter=100 * J.shape[0])[0] / s
    return u / u.sum()


def rows(rng: np.random.Generator, n: int, P: int, spread: float, kind: str) -> np.ndarray:
    """n rows of norms log-spaced over ``spread`` (shuffled) with directions of one kind."""
    U = rng.standard_normal((n, P))
    if kind == "positive":  # pairwise acute: the smallest row is often the answer
        U = np.abs(U) + 0.1
    elif kind == "colinear":
        U = U[0] + 1e-3 * U
    elif kind == "duplicate":
        U[1] = U[0]
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    norms = np.logspace(0, np.log10(spread), n)[rng.permutation(n)]
    return U * norms[:, None] * 10.0 ** rng.uniform(-4, 4)


def solve(J: np.ndarray, method: str = "auto") -> np.ndarray:
    return min_norm_weights(gramian(torch.tensor(J)), method).numpy()


# ----------------------------------------------------------------- the numbers


def test_tiny_row_alone_is_the_answer():
    """T=3, norms 1e-6, 1, 1e6, pairwise acute: the min-norm point is the tiny row itself.
    (The old solver's ridge 1e-10·max diag(G) drowned it: weights (0.5, 0.5, 0).)"""
    rng = np.random.default_rng(0)
    U = np.abs(rng.standard_normal((3, 20))) + 0.1
    J = U / np.linalg.norm(U, axis=1, keepdims=True) * np.array([1e-6, 1.0, 1e6])[:, None]
    for method in ("auto", "enumerate", "wolfe"):
        np.testing.assert_allclose(solve(J, method), [1.0, 0.0, 0.0], atol=1e-12)
    for dtype in (torch.float32, torch.float64):
        m = tb.create("mgda", 3)
        assert isinstance(m, tb.GradientMethod)
        m.aggregate(torch.tensor(J, dtype=dtype))
        assert m.last_weights is not None
        np.testing.assert_allclose(m.last_weights.double().numpy(), [1, 0, 0], atol=1e-6)


@pytest.mark.parametrize("spread", [1e6, 1e8])
@pytest.mark.parametrize("method", ["enumerate", "wolfe"])
def test_ten_rows_spread(spread, method):
    """T=10, norms log-spaced over 1e6 / 1e8: ‖d‖ was 1.8x / 72x the minimum before."""
    rng = np.random.default_rng(1)
    J = rows(rng, 10, 30, spread, "random")
    w = solve(J, method)
    ref = enumerate_faces(J)
    assert np.linalg.norm(w @ J) <= np.linalg.norm(ref @ J) * (1 + 1e-9)
    assert exact_kkt(J, w)[0] <= KKT_TOL


def test_two_rows_spread_1e12_no_cancellation():
    """T=2, norms 1 and 1e12 at an obtuse angle: w_2 ≈ 1e-12 came from 1 − w_1 (error 1e-4)."""
    rng = np.random.default_rng(2)
    for _ in range(5):
        g1, v = rng.standard_normal((2, 9))
        v -= (v @ g1) / (g1 @ g1) * g1 + 0.3 * g1  # obtuse to g1
        g2 = v / np.linalg.norm(v) * 1e12 * np.linalg.norm(g1)
        J = np.stack([g1, g2])
        with mpmath.workdps(60):
            a = [mpmath.mpf(float(x)) for x in g1]
            b = [mpmath.mpf(float(x)) for x in g2]
            aa, bb = mpmath.fdot(a, a), mpmath.fdot(b, b)
            ab = mpmath.fdot(a, b)
            w2 = float((aa - ab) / (aa + bb - 2 * ab))
        assert 0 < w2 < 1e-11
        for method in ("auto", "enumerate", "wolfe"):
            w = solve(J, method)
            assert abs(w[1] - w2) <= 1e-9 * w2, method
            assert abs(w.sum() - 1) <= 1e-15


def test_zero_row_gives_zero_direction():
    """A zero gradient makes d = 0 the min-norm point, whatever the other rows' scales."""
    rng = np.random.default_rng(3)
    for n in (3, 5, 12):
        J = rows(rng, n, 10, 1e12, "random")
        J[1] = 0.0
        w = solve(J)
        assert np.array_equal(w @ J, np.zeros(10)), n


@pytest.mark.parametrize("n,spread", [(3, 1e12), (5, 1e12), (10, 1e12), (40, 1e12)])
def test_opposite_rows_cancel(n, spread):
    """Two exactly opposite rows among rows of norms spread over ``spread``: d = 0 is the
    min-norm point. (The old solver returned ‖d‖ up to Σ w_t‖g_t‖ itself here.) A Gramian
    resolves ‖u_0 + u_1‖ only to √eps ≈ 1.5e-8, which bounds what any solver working on it can
    promise (see min_norm_weights). Beyond T = 8 (Wolfe) the regularised active set misses this
    cancellation at a spread of 1e12 (‖d‖ up to 0.1·Σ w_t‖g_t‖ before every pair's face was
    made to compete)."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        J = rng.standard_normal((n, 20))
        J[1] = -J[0]
        norms = np.logspace(0, np.log10(spread), n)[rng.permutation(n)]
        J = J / np.linalg.norm(J, axis=1, keepdims=True) * norms[:, None]
        w = solve(J)
        share = (w * np.linalg.norm(J, axis=1)).sum()
        assert np.linalg.norm(w @ J) <= 1e-8 * share


# ----------------------------------------------------------------- sweeps

CASES = [
    (n, kind, spread)
    for n in (3, 5, 10)
    for kind in ("random", "positive", "colinear", "duplicate")
    for spread in (1.0, 1e6, 1e12)
]


@pytest.mark.parametrize("n,kind,spread", CASES, ids=[f"{n}-{k}-{s:g}" for n, k, s in CASES])
def test_exact_against_enumeration(n, kind, spread):
    rng = np.random.default_rng(n * 1000 + len(kind) * 10 + int(np.log10(spread)))
    J = rows(rng, n, 20, spread, kind)
    ref_norm = np.linalg.norm(enumerate_faces(J) @ J)
    for method in ("enumerate", "wolfe"):
        w = solve(J, method)
        kkt, _ = exact_kkt(J, w)
        assert kkt <= KKT_TOL, method
        assert np.linalg.norm(w @ J) <= ref_norm * (1 + 1e-9), method


@pytest.mark.parametrize("spread", [1.0, 1e12])
def test_forty_rows_against_nnls(spread):
    rng = np.random.default_rng(40)
    J = rows(rng, 40, 60, spread, "random")
    w = solve(J)
    assert exact_kkt(J, w)[0] <= KKT_TOL
    assert np.linalg.norm(w @ J) <= np.linalg.norm(nnls_weights(J) @ J) * (1 + 1e-9)


def test_float32_rows_spread_1e12():
    """float32 gradients (norms 1e-6..1e6): mgda's weights are those of the exact problem for
    the float32 values, to float32 accuracy."""
    rng = np.random.default_rng(5)
    for n in (3, 10):
        J = rows(rng, n, 20, 1e12, "random") / 1e2
        J32 = torch.tensor(J, dtype=torch.float32)
        m = tb.create("mgda", n)
        assert isinstance(m, tb.GradientMethod)
        d = m.aggregate(J32)
        assert d.dtype == torch.float32
        J64 = J32.double().numpy()
        ref = enumerate_faces(J64)
        assert m.last_weights is not None
        w = m.last_weights.double().numpy()
        assert np.linalg.norm(w @ J64) <= np.linalg.norm(ref @ J64) * (1 + 1e-5)
