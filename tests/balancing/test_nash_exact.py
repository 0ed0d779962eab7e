"""Nash-MTL (issue 9): the authors' normalised problem has the paper's α, and the default solves
``α_t (Gα)_t = 1`` to rounding, not to the size of a ridge.

The authors' solver is re-implemented here from its published description (Navon et al. 2022,
and ``methods/weight_methods.py`` of github.com/AvivNavon/nash-mtl at commit
8748f1ae1952d246c4f5387908cdbbe30903fda6): a sequence of convex problems in which ``φ`` is
linearised at the previous α, minimising ``Σ_i ((G/s)α)_i + φ_lin(α)/s`` subject to
``−log(α_i s) − log(((G/s)α)_i) ≤ 0`` with ``s = ‖G‖_F``. scipy's SLSQP stands in for ECOS.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import taskbalance as tb
from taskbalance.balancing.aggregation.nash_mtl import nash_weights


def authors_subproblem(G: np.ndarray, s: float, prev: np.ndarray):
    """Objective and constraint (``≥ 0`` form) of one convex subproblem of the authors' solver
    for the Gramian normalised by ``s``, linearised at ``prev``."""
    Gs = G / s
    phi_grad = 1.0 / prev + (1.0 / (Gs @ prev)) @ Gs

    def objective(a):
        return (Gs @ a).sum() + phi_grad @ (a - prev) / s

    def constraint(a):  # −log(a_i s) − log((G/s)a)_i ≤ 0
        return np.log(np.clip(a * s, 1e-300, None)) + np.log(np.clip(Gs @ a, 1e-300, None))

    return objective, constraint


def authors_alpha(G: np.ndarray, s: float, iterations: int = 40) -> np.ndarray:
    """The authors' sequential convex iteration for the Gramian ``G`` normalised by ``s``."""
    n = len(G)
    alpha = np.ones(n)
    for _ in range(iterations):
        prev = alpha
        objective, constraint = authors_subproblem(G, s, prev)
        res = minimize(
            objective,
            prev,
            method="SLSQP",
            bounds=[(1e-12, None)] * n,
            constraints=[{"type": "ineq", "fun": constraint}],
            options={"ftol": 1e-15, "maxiter": 500},
        )
        alpha = res.x
        if np.linalg.norm(alpha - prev) < 1e-12 * np.linalg.norm(prev):
            break
    return alpha


def paper_alpha(J: np.ndarray) -> np.ndarray:
    m = tb.create("nash_mtl", len(J), max_norm=0.0)
    assert isinstance(m, tb.GradientMethod)
    m.aggregate(torch.tensor(J))
    assert m.last_weights is not None
    return m.last_weights.numpy()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_authors_normalisation_does_not_change_their_problem(scale):
    """The claim behind removing ``normalize_gramian``: with s = ‖G‖_F each subproblem of the
    authors' solver has the same constraints as with s = 1 and its objective divided by s
    (so the same minimiser), at any linearisation point."""
    rng = np.random.default_rng(4)
    J = rng.standard_normal((3, 7)) * scale
    G = J @ J.T
    s = float(np.linalg.norm(G))
    alpha = paper_alpha(J)
    for _ in range(10):
        prev, a = alpha * rng.uniform(0.9, 1.1, (2, 3))  # near α, where Gα > 0 (log defined)
        assert (G @ a > 0).all() and (G @ prev > 0).all()
        obj_n, con_n = authors_subproblem(G, s, prev)
        obj_r, con_r = authors_subproblem(G, 1.0, prev)
        np.testing.assert_allclose(con_n(a), con_r(a), rtol=1e-12, atol=1e-12)
        assert obj_n(a) * s == pytest.approx(obj_r(a), rel=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_authors_solver_converges_to_the_papers_alpha(scale):
    """Run with their normalisation, the authors' iteration gives the paper's α, which nash_mtl
    computes; the removed option returned √‖G‖_F times that (off by 6x and 160x here)."""
    J = np.random.default_rng(5).standard_normal((3, 7)) * scale
    G = J @ J.T
    theirs = authors_alpha(G, float(np.linalg.norm(G)))
    ours = paper_alpha(J)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert np.abs(ours * np.sqrt(np.linalg.norm(G)) / theirs - 1).max() > 1.0


def test_normalize_gramian_is_removed_with_a_reason():
    for value in (True, False):
        with pytest.raises(ValueError, match="normalize_gramian.*removed.*paper's α"):
            tb.create("nash_mtl", 2, normalize_gramian=value)
    assert "normalize_gramian" not in tb.method_info("nash_mtl").options


def ill_conditioned(rng: np.random.Generator, n: int, cond: float) -> np.ndarray:
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    s = np.logspace(0, -np.log10(cond) / 2, n)
    return (Q * s) @ np.linalg.qr(rng.standard_normal((20, n)))[0].T


@pytest.mark.parametrize("cond", [1e5, 1e8, 1e10])
def test_fixed_point_to_rounding_when_ill_conditioned(cond):
    """The ridge always added before left |α(Gα) − 1| at 1.9e-7 for cond(G) = 1e5."""
    J = ill_conditioned(np.random.default_rng(0), 4, cond)
    G = J @ J.T
    assert np.linalg.cond(G) == pytest.approx(cond, rel=0.5)
    alpha = paper_alpha(J)
    assert (alpha > 0).all()
    assert np.abs(alpha * (G @ alpha) - 1).max() < 1e-10


def test_no_solution_keeps_the_finite_ridge_fallback():
    """A zero gradient or two opposite gradients: no α solves the Nash condition; the documented
    fallback (ridge ρ = 1e-10) stays finite and gives a finite direction."""
    g = np.random.default_rng(1).standard_normal(6)
    for J in (np.stack([g, np.zeros(6), 2 * g]), np.stack([g, -g]), np.stack([g, -0.5 * g, g])):
        Gu = torch.tensor(J @ J.T)
        D = Gu.diagonal().sqrt().clamp_min(1e-300)
        D = torch.where(Gu.diagonal() > 0, D, torch.ones_like(D))
        alpha = nash_weights(Gu / (D[:, None] * D[None, :]))
        assert torch.isfinite(alpha).all() and (alpha > 0).all()
        assert float(alpha.max()) <= 2.0 / np.sqrt(1e-10)
        m = tb.create("nash_mtl", len(J), max_norm=0.0)
        assert isinstance(m, tb.GradientMethod)
        d = m.aggregate(torch.tensor(J))
        assert torch.isfinite(d).all()
        assert float(d.norm()) <= np.sqrt(len(J)) * 1.001
