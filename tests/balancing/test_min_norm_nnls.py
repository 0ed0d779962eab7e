"""MGDA's default solve: the min-norm point from a non-negative least squares problem.

``min_norm_weights`` (``method="auto"``, ``n ≥ 3``) solves the NNLS form of the min-norm
problem (Lawson & Hanson's least distance programming) and keeps the answer when it satisfies
the KKT conditions; otherwise it falls back to the exact enumeration / Wolfe solvers. These tests
check the NNLS path itself (the fallbacks are made to raise) against two independent references
computed here in float64 from the rows: scipy's NNLS on ``min_{u ≥ 0} ‖Jᵀu‖² + (1 − Σu)²``
(``w = u/Σu``) and, for ``n ≤ 8``, the best of every face's affine minimiser.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from taskbalance.balancing import solvers
from taskbalance.balancing.solvers import gramian, min_norm_weights

# tiny n x n work: intra-op threads only add overhead (and stall on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_fallback(monkeypatch):
    """The exact fallbacks raise: whatever passes was solved by the NNLS form."""

    def refuse(*args: object) -> None:
        raise AssertionError("the NNLS answer was rejected: a fallback ran")

    monkeypatch.setattr(solvers, "_min_norm_enumerate", refuse)
    monkeypatch.setattr(solvers, "_min_norm_wolfe", refuse)


def scipy_reference(J: np.ndarray) -> np.ndarray:
    """``w = u/Σu`` from scipy's NNLS on the rows scaled to unit norm (no Gramian)."""
    s = np.linalg.norm(J, axis=1)
    A = np.vstack([(J / s[:, None]).T, (1.0 / s * s.min())[None, :]])
    rhs = np.zeros(A.shape[0])
    rhs[-1] = 1.0
    u = nnls(A, rhs, maxiter=100 * J.shape[0])[0] / s
    return u / u.sum()


def faces_reference(J: np.ndarray) -> float:
    """min ‖wᵀJ‖ over the simplex by every face's affine minimiser (least squares on rows)."""
    n = J.shape[0]
    best = np.inf
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            base, rest = S[0], list(S[1:])
            w = np.zeros(n)
            w[base] = 1.0
            if rest:  # min ‖J_base + Σ c_t (J_t − J_base)‖ over c
                A = (J[rest] - J[base]).T
                c = np.linalg.lstsq(A, -J[base], rcond=None)[0]
                w[rest] = c
                w[base] = 1.0 - c.sum()
            if (w >= -1e-12).all():
                best = min(best, float(np.linalg.norm(np.clip(w, 0, None) @ J)))
    return best


def jacobian(rng: np.random.Generator, n: int, kind: str, scale: float) -> np.ndarray:
    P = 24
    J = rng.standard_normal((n, P))
    if kind == "conflicting":
        J[1::2] = -0.8 * J[0::2][: n // 2] + 0.3 * J[1::2]
    elif kind == "duplicate":
        J[1] = J[0]
        J[-1] = J[0]
    elif kind == "rank2":  # every row in a plane (rank-deficient Gramian)
        J = rng.standard_normal((n, 2)) @ rng.standard_normal((2, P))
    elif kind == "spread":  # row norms log-spaced over 1e8
        J *= np.logspace(0, 8, n)[rng.permutation(n), None]
    elif kind == "tall":  # more tasks than dimensions
        J = rng.standard_normal((n, 3))
    return J * scale


KINDS = ("random", "conflicting", "duplicate", "rank2", "spread", "tall")
CASES = [
    (n, kind, scale)
    for n in (3, 4, 6, 8, 10, 16, 25, 40)
    for kind in KINDS
    for scale in (1e-15, 1.0, 1e15)
]


@pytest.mark.parametrize("n,kind,scale", CASES, ids=[f"{n}-{k}-{s:g}" for n, k, s in CASES])
def test_nnls_form_against_independent_references(n, kind, scale, no_fallback):
    rng = np.random.default_rng(n * 100 + KINDS.index(kind))
    J = jacobian(rng, n, kind, scale)
    w = min_norm_weights(gramian(torch.tensor(J))).numpy()
    assert (w >= 0).all() and abs(w.sum() - 1) <= 1e-14
    Ju = J / scale  # the references in units of order 1
    ours = float(np.linalg.norm(w @ Ju))
    share = float((w * np.linalg.norm(Ju, axis=1)).sum())
    ref = float(np.linalg.norm(scipy_reference(Ju) @ Ju))
    if n <= 8:
        ref = min(ref, faces_reference(Ju))
    assert ours <= ref * (1 + 1e-9) + 1e-12 * share, (ours, ref)
    # KKT in float64 from the rows: g_t·d ≥ ‖d‖², equality on the support (relative to
    # ‖g_t‖‖d‖, plus the rounding of d itself, ~eps·Σ w_t‖g_t‖).
    d = w @ Ju
    r = Ju @ d - d @ d
    tol = np.linalg.norm(Ju, axis=1) * (1e-9 * np.linalg.norm(d) + 1e-14 * share)
    assert (r >= -tol).all()
    assert (np.abs(r[w > 1e-9]) <= tol[w > 1e-9]).all()


def test_duplicate_rows_split_evenly_and_zero_rows_take_the_weight(no_fallback):
    rng = np.random.default_rng(1)
    for n in (4, 10, 40):
        J = rng.standard_normal((n, 30))
        J[1] = J[0]
        J[2] = J[0]
        w = min_norm_weights(gramian(torch.tensor(J))).numpy()
        assert abs(w[1] - w[0]) <= 1e-8 * w[0] and abs(w[2] - w[0]) <= 1e-8 * w[0]
        J[3] = 0.0
        w = min_norm_weights(gramian(torch.tensor(J))).numpy()
        assert np.array_equal(w, np.eye(n)[3])


def test_the_kkt_check_sends_a_wrong_answer_to_the_fallback(monkeypatch):
    """A corrupted NNLS answer is not returned: the KKT check rejects it and the exact
    fallback's answer (the reference's norm) comes back."""
    rng = np.random.default_rng(2)
    J = rng.standard_normal((10, 30))
    ran = []
    wolfe = solvers._min_norm_wolfe

    def counted(C: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ran.append(1)
        return wolfe(C, b)

    monkeypatch.setattr(solvers, "_min_norm_nnls", lambda C, b: np.ones(10) / b.sum())
    monkeypatch.setattr(solvers, "_min_norm_wolfe", counted)
    w = min_norm_weights(gramian(torch.tensor(J))).numpy()
    assert ran == [1]
    ref = float(np.linalg.norm(scipy_reference(J) @ J))
    assert abs(np.linalg.norm(w @ J) - ref) <= 1e-9 * ref
