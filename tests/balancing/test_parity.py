"""Parity of every balancing method with a reference implementation where the definitions agree.

References:

* TorchJD 0.18 (``torchjd.aggregation``, a test-only dependency: the ``dev`` extra). Its
  dual-cone projector needs ``quadprog``; here an exact projector built on scipy's NNLS stands in
  (``NNLSProjector``), so UPGrad and DualProj compare the definitions, not QP solvers.
* LibMTL (github.com/median-research-group/LibMTL) at commit ``LIBMTL_COMMIT``: its weighting
  methods are re-implemented below in numpy from a reading of ``LibMTL/weighting/<Method>.py``
  (each test names its file), written from the equations those files implement, not copied.

The matrices: random, near-colinear rows, exactly opposite rows, a zero row, duplicated rows and
row norms spread from 1e-12 to 1e12, T in {2, 3, 5, 10} (and 40 for random and spread rows),
float32 and float64 (the reference gets the float64 values of the same matrix; float32 results
are compared at float32 accuracy).

Parity matrix (method: reference → result; "differs" = a documented variant, checked against the
paper's equations instead):

* upgrad, dualproj, config: TorchJD → agree on every kind. (LibMTL's UPGrad.py is TorchJD's code
  with reg_eps = 1e-4 added to the normalised Gramian: a 1e-4 perturbation ours does not make.)
* aligned_mtl: TorchJD → agree (not on spread rows: rank cut at eps·n·λ_max of a Gramian
  spanning 1e48 in both; not float32 near-colinear: our rank threshold follows the gradient
  dtype). LibMTL's Aligned_MTL.py → same direction times T (it sums B, we average).
* imtl_g: TorchJD → agree on random, near-colinear, zero and duplicated rows; differs on spread
  rows (its pinv truncates the small rows) and opposite rows (its least-squares weights violate
  the equal-projection condition); ours is checked against the paper's conditions on all kinds.
  LibMTL's IMTL.py is the paper's closed form (the same equations).
* mgda: TorchJD and LibMTL (MGDA.py, MinNormSolver) → differ: both run Frank-Wolfe to a
  tolerance; ours is exact (never longer; equal to an exact face enumeration). Normalised
  variants: LibMTL (param mode) applies the weights to the normalised gradients, ours (as the
  authors' code) to the raw ones.
* pcgrad, gradvac: TorchJD → agree given the same task orders. LibMTL's PCGrad.py also visits
  i itself (it can project g_i^PC off its own g_i) and adds 1e-8 to ‖g_j‖²; its GradVac.py can
  group per layer (ours: one group, its group_type 0).
* graddrop: TorchJD → agree given the same U. LibMTL's GradDrop.py multiplies by the sign of the
  activations (rep mode only), which our J-only method does not see (documented).
* fairgrad: TorchJD (and LibMTL's FairGrad.py, the same least_squares) → agree to its tolerance
  on random and near-colinear rows; differs on spread rows, where least_squares stops far from
  the solution (ours is checked on the equation G w = w^(-1/α)).
* nash_mtl: TorchJD/LibMTL need cvxpy (not installed); checked against the paper's equation
  α(Gα) = 1 where a solution exists, and in test_nash_exact.py against the authors' iteration.
* cagrad: LibMTL's CAGrad.py (SLSQP on the dual) → agree on random rows (TorchJD's needs
  cvxpy); on the other kinds SLSQP returns NaN or a worse point, and ours is checked on the
  paper's primal (feasible, at least as good).
* modo, sdmgrad: TorchJD → agree (sdmgrad: float64, not opposite rows, where its lr-10 inner
  loop amplifies rounding); LibMTL's SDMGrad.py with one batch → agree; LibMTL's MoDo.py
  needs three batches per step (the same update with one batch is TorchJD's).
* excess_mtl: LibMTL's ExcessMTL.py → agree; TorchJD → differs in scale (sum 1 vs T) and in its
  first step (it steps with the raw estimate); the increments agree.
* db_mtl, moco: LibMTL → agree (ours without its 1e-8 guards; moco with simplex="softmax",
  normalize="loss").
* ew, gls, uw, imtl_l, dwa, rlw, stch, famo: LibMTL → agree.
* gradnorm: LibMTL's GradNorm.py → differs by design: it parametrises w = T·softmax(s) and
  uses the whole shared gradient; ours follows the paper (w renormalised to Σw = T, norms on the
  last shared layer), checked against the paper's update in test_weighting.py.
* static, scaled: no reference (a fixed user weighting; taskbalance's own loss scaling).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from _typed import gradient_method, tensor_attr
from scipy.optimize import minimize, nnls, root

import taskbalance as tb
from taskbalance.balancing.solvers import random_orders
from taskbalance.balancing.weighting.famo import FAMO

torchjd_aggregation = pytest.importorskip("torchjd.aggregation")
from torchjd.linalg import DualConeProjector  # noqa: E402

LIBMTL_COMMIT = "4336804847eaa5e0b924b743d76beec7ac3fdc97"

KINDS = ("random", "near_colinear", "opposite", "zero_row", "duplicate", "spread")
SIZES = (2, 3, 5, 10)
DTYPES = (torch.float32, torch.float64)
TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


# tiny n x n work: intra-op threads only add overhead (and stall on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def matrix(kind: str, n: int, seed: int) -> np.ndarray:
    P = max(12, n + 20)  # T = 40: more columns than rows (rank deficiency is its own case)
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((n, P))
    if kind == "near_colinear":
        J = J[0] + 1e-3 * J
    elif kind == "opposite":
        J[1] = -J[0]
    elif kind == "zero_row":
        J[0] = 0.0
    elif kind == "duplicate":
        J[1] = J[0]
    elif kind == "spread":
        J = J / np.linalg.norm(J, axis=1, keepdims=True)
        J *= np.logspace(-12, 12, n)[rng.permutation(n)][:, None]
    return J


def cases(kinds=KINDS, sizes=SIZES, big: tuple[str, ...] = ("random", "spread")):
    out = [(k, n) for k in kinds for n in sizes if not (n < 2 or (k == "opposite" and n < 2))]
    out += [(k, 40) for k in big if k in kinds]
    return out


def rel_err(d: np.ndarray, ref: np.ndarray, J: np.ndarray, dtype=torch.float64) -> float:
    """‖d − ref‖ relative to ‖ref‖ + a rounding floor: where rows cancel (ref ≈ 0) the
    difference is measured against the rows' scale, at the dtype's rounding level."""
    allowance = (1e-13 if dtype == torch.float64 else 1e-6) * np.linalg.norm(J, axis=1).sum()
    return float(np.linalg.norm(d - ref) / (np.linalg.norm(ref) + allowance / TOL[dtype]))


def ours(
    name: str, J: np.ndarray, dtype: torch.dtype, **options
) -> tuple[np.ndarray, tb.GradientMethod]:
    m = tb.create(name, J.shape[0], **options)
    assert isinstance(m, tb.GradientMethod)
    d = m.aggregate(torch.tensor(J, dtype=dtype))
    assert d.dtype == dtype and torch.isfinite(d).all()
    return d.double().numpy(), m


def as_used(J: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The float64 values of J after rounding to ``dtype`` (what the method really sees)."""
    return torch.tensor(J, dtype=dtype).double().numpy()


def tj(aggregator, J: np.ndarray) -> np.ndarray:
    return aggregator(torch.tensor(J, dtype=torch.float64)).numpy()


class NNLSProjector(DualConeProjector):
    """Exact projection weights: ``min vᵀGv s.t. v ≥ u`` as an NNLS problem on a factor of the
    unit-diagonal Gramian (``v = u + D⁻¹z``, ``z ≥ 0``), so spread row norms stay accurate."""

    def __call__(self, U: torch.Tensor, G) -> torch.Tensor:
        G_ = G.double().numpy()
        D = np.sqrt(np.clip(np.diag(G_), 0, None))
        D = np.where(D > 0, D, 1.0)
        C = G_ / np.outer(D, D)
        lam, V = np.linalg.eigh(C)
        M = V * np.sqrt(np.clip(lam, 0, None))  # C = M Mᵀ
        out = []
        for u in U.double().numpy().reshape(-1, len(D)):
            z, _ = nnls(M.T, -M.T @ (D * u), maxiter=50 * len(D))
            out.append(u + z / D)
        return torch.tensor(np.array(out).reshape(U.shape), dtype=U.dtype)


def tolerance(kind: str, dtype: torch.dtype) -> float:
    """Rounding allowance: near-colinear rows make every method's systems ill-conditioned
    (condition numbers ~1e4 here), so their results carry that much more rounding."""
    return (
        TOL[dtype]
        * (1e3 if kind == "near_colinear" else 1.0)
        * (10.0 if dtype == torch.float32 and kind in ("opposite", "near_colinear") else 1.0)
    )


def check_all(name, reference, dtype, kinds=KINDS, big=("random", "spread"), options=None):
    """Compare our ``name`` with ``reference(J64, n)`` on every case; report all mismatches."""
    bad = {}
    for k, (kind, n) in enumerate(cases(kinds, big=big)):
        J = matrix(kind, n, seed=k)
        d, _ = ours(name, J, dtype, **(options or {}))
        err = rel_err(d, reference(as_used(J, dtype), n), J, dtype)
        if not err <= tolerance(kind, dtype):
            bad[(kind, n)] = err
    assert not bad, bad


# ----------------------------------------------------------------- TorchJD: same definitions

TORCHJD_SAME = {
    # name: (kinds where the definitions agree, torchjd aggregator factory)
    "upgrad": (KINDS, lambda n: torchjd_aggregation.UPGrad(projector=NNLSProjector())),
    "dualproj": (KINDS, lambda n: torchjd_aggregation.DualProj(projector=NNLSProjector())),
    "config": (KINDS, lambda n: torchjd_aggregation.ConFIG()),
    # Spread rows: the Gramian's eigenvalues span 1e48 and both implementations cut the rank at
    # n·eps·λ_max, so what they return is rounding noise (Aligned-MTL is defined on G itself and
    # is not invariant to per-row scales). Near-colinear float32: our rank threshold is
    # 10·eps(float32)·n·λ_max on purpose (float32 gradients carry that rounding), TorchJD's is
    # eps(G's dtype); the float64 reference of the same matrix keeps a rank we cut.
    "aligned_mtl": (
        ("random", "near_colinear", "opposite", "zero_row", "duplicate"),
        lambda n: torchjd_aggregation.AlignedMTL(),
    ),
    # Spread rows: TorchJD's pinv(G)·√diag(G) truncates singular values below 1e-15·σ_max, so
    # it drops the small rows. Opposite rows: the paper's conditions (Σα = 1, equal dᵀu_t) have
    # the unique solution α = (½, ½, 0, …), d = 0; TorchJD's least-squares pinv solution
    # violates them (projections 0, 0, 4.5 at T = 3). Ours is checked against the paper below.
    "imtl_g": (
        ("random", "near_colinear", "zero_row", "duplicate"),
        lambda n: torchjd_aggregation.IMTLG(),
    ),
}


@pytest.mark.parametrize("name", sorted(TORCHJD_SAME))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_torchjd_same_definition(name, dtype):
    kinds, make = TORCHJD_SAME[name]
    skip = name == "aligned_mtl" and dtype == torch.float32
    kinds = tuple(k for k in kinds if not (skip and k == "near_colinear"))
    check_all(name, lambda J, n: tj(make(n), J), dtype, kinds=kinds, big=("random", "spread"))


def imtl_g_paper(J: np.ndarray, n: int) -> np.ndarray:
    """IMTL-G (Liu et al., ICLR 2021): Σα = 1 and equal projections dᵀu_t = c. With
    β_t = α_t‖g_t‖ this is C β = c·1 for the unit Gramian C (solved in float64)."""
    D = np.linalg.norm(J, axis=1)
    U = J / D[:, None]
    beta = np.linalg.solve(U @ U.T, np.ones(n))
    alpha = beta / D
    return (alpha / alpha.sum()) @ J


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_imtl_g_against_the_papers_equations(dtype):
    """Regression (found by this module): rows with norms 1e-12..1e12 had weights off by 0.5
    (T=3) and a direction off by 2e5x (T=5): the (α, c) system was solved in raw units."""
    check_all("imtl_g", imtl_g_paper, dtype, kinds=("random", "spread"))


def test_imtl_g_conditions_on_every_kind():
    """Σα = 1 and equal projections dᵀu_t on every matrix (the rows that are not zero)."""
    for k, (kind, n) in enumerate(cases()):
        J = matrix(kind, n, seed=k)
        d, m = ours("imtl_g", J, torch.float64)
        norms = np.linalg.norm(J, axis=1)
        live = norms > 0
        proj = (J[live] / norms[live, None]) @ d
        assert m.last_weights is not None
        scale = max(np.abs(proj).max(), (m.last_weights.abs().numpy() * norms).sum())
        assert np.abs(proj - proj.mean()).max() <= 1e-9 * scale, (kind, n)
        assert abs(m.last_weights.sum().item() - 1) < 1e-12


# ----------------------------------------------------------------- MGDA: exact vs Frank-Wolfe


def min_norm_enumeration(J: np.ndarray) -> np.ndarray:
    """Exact min-norm weights of the rows' hull: every face's affine minimiser by least squares
    on the rows (base: the face's shortest row, so no weight comes from 1 − Σ others)."""
    n = J.shape[0]
    norms = np.linalg.norm(J, axis=1)
    best: float = np.inf
    best_w: np.ndarray | None = None
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            base = min(S, key=lambda t: norms[t])
            rest = [t for t in S if t != base]
            w = np.zeros(n)
            w[base] = 1.0
            if rest:
                A = (J[rest] - J[base]).T
                cn = np.linalg.norm(A, axis=0)
                if (cn == 0).any():
                    continue
                c = np.linalg.lstsq(A / cn, -J[base], rcond=None)[0] / cn
                w[rest], w[base] = c, 1.0 - c.sum()
            if (w < -1e-14).any():
                continue
            w = np.clip(w, 0, None) / np.clip(w, 0, None).sum()
            if np.linalg.norm(w @ J) < best:
                best, best_w = float(np.linalg.norm(w @ J)), w
    assert best_w is not None
    return best_w


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_mgda_exact_where_references_approximate(dtype):
    """Differs by design: TorchJD's MGDA and LibMTL's MinNormSolver (MGDA.py) run Frank-Wolfe
    to a tolerance (the paper's algorithm); ours is the exact min-norm point. So ours is never
    longer than TorchJD's, and equals an exact enumeration of faces."""
    bad: dict[tuple[str, int, str], object] = {}
    for k, (kind, n) in enumerate(cases()):
        J = matrix(kind, n, seed=k)
        d, _ = ours("mgda", J, dtype)
        J64 = as_used(J, dtype)
        floor = 1e-10 * np.linalg.norm(J64, axis=1).sum()
        fw = tj(torchjd_aggregation.MGDA(), J64)
        if np.linalg.norm(d) > np.linalg.norm(fw) * (1 + tolerance(kind, dtype)) + floor:
            bad[(kind, n, "torchjd")] = (np.linalg.norm(d), np.linalg.norm(fw))
        if n <= 5:
            err = rel_err(d, min_norm_enumeration(J64) @ J64, J, dtype)
            if err > tolerance(kind, dtype):
                bad[(kind, n, "exact")] = err
    assert not bad, bad


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalisations(normalization):
    """The weights are the min-norm weights of the normalised rows (g/‖g‖, g/L, g/(L‖g‖)),
    applied to the raw gradients as in the authors' code. Differs by design from LibMTL's
    MGDA.py in param mode, which applies them to the normalised gradients."""
    rng = np.random.default_rng(9)
    for k, (kind, n) in enumerate(cases(("random", "spread"), sizes=(2, 3, 5), big=())):
        J = matrix(kind, n, seed=k)
        losses = rng.uniform(0.1, 5.0, n)
        m = tb.create("mgda", n, normalization=normalization)
        assert isinstance(m, tb.GradientMethod)
        d = m.aggregate(torch.tensor(J), torch.tensor(losses)).numpy()
        norms = np.linalg.norm(J, axis=1)
        scale = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
        w = min_norm_enumeration(J / scale[:, None])
        # Each weight to 1e-9 of itself where it matters: its share of d (w_t‖g_t‖).
        assert m.last_weights is not None
        share = np.abs(m.last_weights.numpy() - w) * norms
        assert share.max() <= 1e-9 * (w * norms).sum(), (kind, n)
        assert rel_err(d, w @ J, J) <= 1e-9, (kind, n)


# ----------------------------------------------------------------- same random draws


def orders_of(seed: int, n: int) -> list[list[int]]:
    """The task orders our PCGrad/GradVac draw first from a generator seeded with ``seed``."""
    return random_orders(n, torch.Generator().manual_seed(seed), torch.device("cpu")).tolist()


def scripted_randperm(perms: list[list[int]]):
    it = iter(perms)
    return lambda *args, **kwargs: torch.tensor(next(it))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_pcgrad_same_orders(dtype, monkeypatch):
    """TorchJD's PCGrad visits the other tasks in torch.randperm order; given our orders it must
    give our direction (LibMTL's PCGrad.py is the same projection loop with random.shuffle)."""
    bad = {}
    for k, (kind, n) in enumerate(cases()):
        J = matrix(kind, n, seed=k)
        d, _ = ours("pcgrad", J, dtype, seed=k)
        orders = orders_of(k, n)
        with monkeypatch.context() as mp:
            mp.setattr(
                torch, "randperm", scripted_randperm([o + [i] for i, o in enumerate(orders)])
            )
            ref = tj(torchjd_aggregation.PCGrad(), as_used(J, dtype))
        err = rel_err(d, ref, J, dtype)
        if not err <= tolerance(kind, dtype):
            bad[(kind, n)] = err
    assert not bad, bad


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gradvac_same_orders_over_steps(dtype, monkeypatch):
    """GradVac over three steps (the EMA targets carry over), TorchJD with eps=0 and our orders.
    Zero and spread rows differ by design: TorchJD adds eps to every denominator, ours skips a
    pair with a zero gradient (documented), so they are left out."""
    bad = {}
    for k, (kind, n) in enumerate(cases(("random", "near_colinear", "opposite", "duplicate"))):
        m = tb.create("gradvac", n, beta=0.5, seed=k)
        assert isinstance(m, tb.GradientMethod)
        ref_agg = torchjd_aggregation.GradVac(beta=0.5, eps=0.0)
        gen = torch.Generator().manual_seed(k)
        for step in range(3):
            J = matrix(kind, n, seed=100 * k + step)
            d = m.aggregate(torch.tensor(J, dtype=dtype)).double().numpy()
            orders = random_orders(n, gen, torch.device("cpu")).tolist()
            perms = [
                [[j for j in range(n) if j != i].index(t) for t in o] for i, o in enumerate(orders)
            ]
            with monkeypatch.context() as mp:
                mp.setattr(torch, "randperm", scripted_randperm(perms))
                ref = tj(ref_agg, as_used(J, dtype))
            err = rel_err(d, ref, J, dtype)
            # φ = −1 (opposite rows): √(1 − φ²) turns rounding of φ into √eps.
            slack = 1e3 if kind == "opposite" and dtype == torch.float64 else 10.0
            if not err <= slack * tolerance(kind, dtype):
                bad[(kind, n, step)] = err
    assert not bad, bad


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_graddrop_same_draws(dtype):
    """Same U ~ U(0, 1) (the global generator seeded as ours): the same masks, the same d."""
    bad = {}
    for k, (kind, n) in enumerate(cases()):
        J = torch.tensor(matrix(kind, n, seed=k), dtype=dtype)
        d = gradient_method("graddrop", n, seed=k).aggregate(J)
        torch.manual_seed(k)
        ref = torchjd_aggregation.GradDrop()(J)
        if not torch.allclose(d, ref, rtol=TOL[dtype], atol=0.0):
            bad[(kind, n)] = float((d - ref).abs().max())
    assert not bad, bad


# ----------------------------------------------------------------- fixed points


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fairgrad_equation_on_spread_rows(dtype):
    """Differs by design from TorchJD on spread rows: its least_squares from uniform weights
    stops with residuals up to 1e13 (relative) there; ours solves G w = w^(-1/α)."""
    for k, n in enumerate((2, 3, 5, 10)):
        J = as_used(matrix("spread", n, seed=k), dtype)
        _, m = ours("fairgrad", J, dtype, alpha=1.0)
        assert m.last_weights is not None
        w = m.last_weights.double().numpy()
        G = J @ J.T
        assert (w > 0).all()
        tol = 1e-8 if dtype == torch.float64 else 1e-3
        assert (np.abs(G @ w - 1 / w) * w).max() <= tol, n


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_against_torchjd(alpha):
    """TorchJD solves G w = w^(-1/α) with scipy's least_squares (tolerance ~1e-8), we by Newton:
    the directions agree to its tolerance, and our residual is at rounding level. Zero rows and
    exactly opposite/duplicate rows have no positive solution (excluded)."""
    for k, (kind, n) in enumerate(cases(("random", "near_colinear"), big=())):
        J = matrix(kind, n, seed=k)
        d, m = ours("fairgrad", J, torch.float64, alpha=alpha)
        ref = tj(torchjd_aggregation.FairGrad(alpha=alpha), J)
        assert rel_err(d, ref, J) < 1e-5, (kind, n)
        assert m.last_weights is not None
        w = m.last_weights.numpy()
        G = J @ J.T
        assert np.abs(G @ w - w ** (-1 / alpha)).max() <= 1e-9 * np.abs(w ** (-1 / alpha)).max()


def nash_paper(J: np.ndarray, n: int) -> np.ndarray:
    """Nash-MTL (Navon et al., ICML 2022): α_t (Gα)_t = 1, by scipy's root finder in the unit form.
    (TorchJD's NashMTL and LibMTL's Nash_MTL.py need cvxpy; their α is the paper's, see
    test_nash_exact.py.)"""
    D = np.linalg.norm(J, axis=1)
    C = (J / D[:, None]) @ (J / D[:, None]).T
    sol = root(lambda b: C @ b - 1.0 / b, np.full(n, 1.0 / np.sqrt(n)), method="lm", tol=1e-15)
    assert (sol.x > 0).all() and np.abs(sol.x * (C @ sol.x) - 1).max() < 1e-12
    return (sol.x / D) @ J


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nash_mtl_against_the_papers_equation(dtype):
    """Where a Nash solution exists; a zero row or two opposite rows have none, and ours falls
    back to the documented ridge (test_nash_exact.py)."""
    check_all(
        "nash_mtl",
        nash_paper,
        dtype,
        kinds=("random", "spread", "duplicate"),
        options={"max_norm": 0.0},
    )


def cagrad_libmtl(J: np.ndarray, n: int, c: float = 0.4, rescale: int = 1) -> np.ndarray:
    """LibMTL/weighting/CAGrad.py: the dual min_w wᵀG g0-weights + c‖g0‖·√(wᵀGw) over the
    simplex by SLSQP, then d = g0 + c‖g0‖/‖g_w‖ g_w, divided by 1 + c² (rescale=1). Without
    its 1e-8 guards, and with a multistart so SLSQP finds the optimum."""
    G = J @ J.T
    b = np.full(n, 1.0 / n)
    phi = c * np.sqrt(b @ G @ b)

    def f(w):
        return w @ G @ b + phi * np.sqrt(max(w @ G @ w, 0.0))

    best = None
    for start in [b, *np.eye(n)] if n <= 3 else [b]:
        res = minimize(
            f,
            start,
            method="SLSQP",
            bounds=[(0, 1)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    gw = best.x @ J
    d = J.mean(0) + phi / np.linalg.norm(gw) * gw
    return d / {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]


def test_cagrad_against_libmtl():
    """SLSQP is accurate to ~1e-6 here; compared where the dual has a unique, interior answer."""
    for k, (kind, n) in enumerate(cases(("random",), sizes=(2, 3, 5), big=())):
        J = matrix(kind, n, seed=k)
        d, _ = ours("cagrad", J, torch.float64)
        assert rel_err(d, cagrad_libmtl(J, n), J) < 1e-5, (kind, n)


@functools.cache
def cagrad_reference(kind: str, n: int, k: int) -> np.ndarray:
    """LibMTL's CAGrad direction (c = 0.4, no rescale) of ``matrix(kind, n, k)``, cached for
    both dtypes (SLSQP with restarts is the slow part)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return cagrad_libmtl(matrix(kind, n, seed=k), n, c=0.4, rescale=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cagrad_primal_on_every_kind(dtype):
    """The paper's primal (Liu et al. 2021, Eq. 4): max_d min_t g_tᵀd s.t. ‖d − g_0‖ ≤ c‖g_0‖.
    Where SLSQP's dual (LibMTL's method) is unreliable (opposite, zero, spread rows: its
    d is NaN or off by 0.3), ours is checked on the primal: feasible, and at least as good as
    the reference's d wherever that is feasible."""
    c = 0.4
    for k, (kind, n) in enumerate(cases(sizes=(2, 3, 5), big=())):
        J = matrix(kind, n, seed=k)
        d, _ = ours("cagrad", J, dtype, c=c, rescale=0)
        J64 = J if dtype == torch.float64 else as_used(J, dtype)
        g0 = J64.mean(0)
        radius = c * np.linalg.norm(g0)
        slack = 1e-6 if dtype == torch.float32 else 1e-12
        scale = np.linalg.norm(J64, axis=1).max() * (np.linalg.norm(g0) + radius)
        assert np.linalg.norm(d - g0) <= radius + slack * np.linalg.norm(J64, axis=1).sum()
        ref = cagrad_reference(kind, n, k)
        if np.isfinite(ref).all() and np.linalg.norm(ref - g0) <= radius * (1 + 1e-9):
            assert (J64 @ d).min() >= (J64 @ ref).min() - slack * scale, (kind, n)


# ----------------------------------------------------------------- stateful weightings


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_modo_one_step_on_every_kind(dtype):
    def ref(J, n):
        G = torch.tensor(J @ J.T)
        return torchjd_aggregation.MoDoWeighting(gamma=0.1, rho=0.1)(G).numpy() @ J

    check_all("modo", ref, dtype, options={"gamma": 0.1, "rho": 0.1})


def test_sdmgrad_one_step_on_every_kind():
    """float64 only, opposite rows excluded: with lr 10 the inner loop is unstable along
    conflicting directions (lr·λ_max(Â) up to 20 at T = 2), so rounding differences between two
    Gramians are amplified into different projected iterates (both implementations stay at the
    exact answer (½, ½) only when G is exactly symmetric in the two rows)."""

    def ref(J, n):
        return torchjd_aggregation.SDMGradWeighting()(torch.tensor(J @ J.T)).numpy() @ J

    kinds = ("random", "near_colinear", "zero_row", "duplicate", "spread")
    bad = {}
    for k, (kind, n) in enumerate(cases(kinds, big=())):
        J = matrix(kind, n, seed=k)
        d, _ = ours("sdmgrad", J, torch.float64)
        err = rel_err(d, ref(J, n), J)
        if err > 1e-6:
            bad[(kind, n)] = err
    assert not bad, bad


def test_modo_and_sdmgrad_against_torchjd():
    """MoDo's projected step and SDMGrad's inner loop over a sequence of steps (state carried).
    SDMGrad differs only in TorchJD's +1e-8 on the scale (ours handles G = 0 explicitly), so
    gradients are kept at unit scale."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        modo = gradient_method("modo", n, gamma=0.1, rho=0.1)
        sdm = gradient_method("sdmgrad", n)
        tj_modo = torchjd_aggregation.MoDoWeighting(gamma=0.1, rho=0.1)
        tj_sdm = torchjd_aggregation.SDMGradWeighting()
        for _ in range(4):
            J = rng.standard_normal((n, 9))
            G = torch.tensor(J @ J.T)
            modo.aggregate(torch.tensor(J))
            sdm.aggregate(torch.tensor(J))
            assert modo.last_weights is not None
            np.testing.assert_allclose(modo.last_weights.numpy(), tj_modo(G).numpy(), rtol=1e-9)
            assert sdm.last_weights is not None
            np.testing.assert_allclose(sdm.last_weights.numpy(), tj_sdm(G).numpy(), rtol=1e-7)


def test_excess_mtl_against_torchjd():
    """Same AdaGrad excess-risk estimates (Eqs. 6-7) and exponentiated-gradient steps (Eq. 9):
    the per-step log-weight increments agree up to a constant. Differs by design: our weights
    sum to T (the authors' code), TorchJD's to 1; and on the first step (the baseline) TorchJD
    also takes a step with the raw estimate, ours keeps w = 1."""
    rng = np.random.default_rng(1)
    for n in (2, 3, 5):
        ours_m = tb.create("excess_mtl", n, robust_step_size=0.5)
        assert isinstance(ours_m, tb.GradientMethod)
        ref = torchjd_aggregation.ExcessMTLWeighting(robust_step_size=0.5)
        previous = None
        for _ in range(4):
            J = torch.tensor(rng.standard_normal((n, 9)))
            ours_m.aggregate(J)
            assert ours_m.last_weights is not None
            logs = (ours_m.last_weights.log().numpy(), ref(J).log().numpy())
            assert abs(ours_m.last_weights.sum().item() - n) < 1e-9
            if previous is not None:
                step_ours, step_ref = (now - before for now, before in zip(logs, previous))
                diff = step_ours - step_ref
                # TorchJD divides by (baseline + 1e-7), ours by the baseline.
                np.testing.assert_allclose(diff - diff.mean(), 0.0, atol=1e-6)
            previous = logs


# ----------------------------------------------------------------- LibMTL: loss weighting


def effective_weights(method, losses: torch.Tensor) -> tuple[float, np.ndarray]:
    """The combined loss and ∂total/∂L_t (what each task's gradient is multiplied by)."""
    L = losses.clone().requires_grad_(True)
    total = method.combine(L)
    (grad,) = torch.autograd.grad(total, L)
    return float(total.detach()), grad.numpy()


LOSSES = [np.array([0.7, 2.3]), np.array([1e-3, 1.0, 30.0]), np.array([0.2, 0.5, 1.5, 4.0, 9.0])]


@pytest.mark.parametrize("losses", LOSSES, ids=["T2", "T3", "T5"])
def test_loss_weightings_against_libmtl(losses):
    """EW.py: Σ L. GLS.py: (Π L)^(1/T). UW.py: Σ L/(2e^s) + s/2 (our default form, s learnable).
    IMTL.py (its loss part): Σ e^s L − s. The values and ∂/∂L_t agree for random s."""
    n = len(losses)
    L = torch.tensor(losses)
    s = torch.tensor(np.random.default_rng(n).normal(size=n))
    value, w = effective_weights(tb.create("ew", n), L)
    assert value == pytest.approx(losses.sum(), rel=1e-12)
    np.testing.assert_allclose(w, 1.0)
    value, w = effective_weights(tb.create("gls", n), L)
    gm = np.prod(losses) ** (1 / n)
    assert value == pytest.approx(gm, rel=1e-12)
    np.testing.assert_allclose(w, gm / (n * losses), rtol=1e-12)
    uw = tb.create("uw", n)
    with torch.no_grad():
        tensor_attr(uw, "log_vars").copy_(s)
    value, w = effective_weights(uw, L)
    s_ = tensor_attr(uw, "log_vars").detach().double().numpy()  # the parameter is float32
    assert value == pytest.approx((losses / (2 * np.exp(s_)) + s_ / 2).sum(), rel=1e-12)
    np.testing.assert_allclose(w, 1 / (2 * np.exp(s_)), rtol=1e-12)
    imtl_l = tb.create("imtl_l", n)
    with torch.no_grad():
        tensor_attr(imtl_l, "log_scales").copy_(s)
    value, w = effective_weights(imtl_l, L)
    s_ = tensor_attr(imtl_l, "log_scales").detach().double().numpy()
    assert value == pytest.approx((np.exp(s_) * losses - s_).sum(), rel=1e-12)
    np.testing.assert_allclose(w, np.exp(s_), rtol=1e-12)


def test_dwa_against_libmtl():
    """DWA.py: weights 1 for the first two epochs, then T·softmax(r/τ) with
    r_t = L_t(k−1)/L_t(k−2) from the epochs' mean losses."""
    rng = np.random.default_rng(2)
    n, tau = 3, 2.0
    m = tb.create("dwa", n, temperature=tau)
    history: list[np.ndarray] = []
    for epoch in range(5):
        _, w = effective_weights(m, torch.tensor(rng.uniform(0.5, 2.0, n)))
        if epoch < 2:
            expected = np.ones(n)
        else:
            r = history[-1] / history[-2]
            expected = n * np.exp(r / tau) / np.exp(r / tau).sum()
        np.testing.assert_allclose(w, expected, rtol=1e-12)
        means = rng.uniform(0.5, 2.0, n)
        history.append(means)
        m.epoch_end(torch.tensor(means))


def test_rlw_against_libmtl():
    """RLW.py: softmax of a standard normal draw each step; given the same draws (our seeded
    generator's), the same weights."""
    n, seed = 4, 11
    m = tb.create("rlw", n, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        _, w = effective_weights(m, torch.ones(n, dtype=torch.float64))
        z = torch.randn(n, generator=gen, dtype=torch.float64)
        np.testing.assert_allclose(w, torch.softmax(z, 0).numpy(), rtol=1e-12)


# ----------------------------------------------------------------- LibMTL: stateful aggregation


def test_db_mtl_against_libmtl():
    """DB_MTL.py on the gradients of log(L + ε): ĝ ← g + β_k (ĝ − g) with β_k = β/k^σ, then
    d = Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t. Differs by design only in LibMTL's +1e-8 in that
    denominator (ours: exact ratio; a zero ĝ_t gets 0), so gradients are of unit scale here."""
    rng = np.random.default_rng(3)
    n, P, beta, sigma = 3, 7, 0.9, 0.5
    m = tb.create("db_mtl", n, beta=beta, beta_sigma=sigma)
    assert isinstance(m, tb.GradientMethod)
    buffer = np.zeros((n, P))
    for k in range(1, 5):
        J = rng.standard_normal((n, P))
        d = m.aggregate(torch.tensor(J)).numpy()
        buffer = J + beta / k**sigma * (buffer - J)
        norms = np.linalg.norm(buffer, axis=1)
        ref = ((norms.max() / norms)[:, None] * buffer).sum(0)
        np.testing.assert_allclose(d, ref, rtol=1e-7)


def test_moco_against_libmtl():
    """MoCo.py: h_t = L_t g_t/‖g_t‖, y ← y − β_k (y − h), λ ← softmax(λ − γ_k (YYᵀ + ρI) λ),
    d = Yᵀλ (our options normalize="loss", simplex="softmax" select LibMTL's variant)."""
    rng = np.random.default_rng(4)
    n, P = 3, 6
    opts = dict(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0)
    m = tb.create("moco", n, simplex="softmax", normalize="loss", **opts)
    assert isinstance(m, tb.GradientMethod)
    y = np.zeros((n, P))
    lam = np.full(n, 1.0 / n)
    for k in range(1, 5):
        J, losses = rng.standard_normal((n, P)), rng.uniform(0.5, 2.0, n)
        d = m.aggregate(torch.tensor(J), torch.tensor(losses)).numpy()
        h = J / np.linalg.norm(J, axis=1, keepdims=True) * losses[:, None]
        y = y - 0.5 / k**0.5 * (y - h)
        z = lam - 0.1 / k**0.5 * (y @ y.T) @ lam
        lam = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(d, y.T @ lam, rtol=1e-7)


def test_aligned_mtl_against_libmtl_scale():
    """Aligned_MTL.py returns B·1 (weights summing like 1 per task), TorchJD and ours B·(1/n):
    the same direction, n times shorter (our default task_weights are uniform 1/n)."""
    for k, (kind, n) in enumerate(cases(("random",), big=())):
        J = matrix(kind, n, seed=k)
        d, _ = ours("aligned_mtl", J, torch.float64)
        lam, V = np.linalg.eigh(J @ J.T)
        order = np.argsort(lam)[::-1]
        lam, V = lam[order], V[:, order]
        B = np.sqrt(lam[-1]) * (V / np.sqrt(lam)) @ V.T
        np.testing.assert_allclose(n * d, B.sum(0) @ J, rtol=1e-9)


def test_stch_against_libmtl():
    """STCH.py: Σ log(L + ε) during warm-up; in the warm-up's last epoch the step losses are
    averaged into the nadir N; afterwards T·μ·log Σ exp(log(L/N + ε)/μ). LibMTL subtracts the
    (detached) max inside without adding it back, so only the gradients are compared."""
    rng = np.random.default_rng(5)
    n, mu, eps = 3, 0.5, 1e-20
    m = tb.create("stch", n, mu=mu, warmup_epochs=1, eps=eps)
    collected = []
    for epoch in range(3):
        for _ in range(3):
            L = rng.uniform(0.2, 3.0, n)
            _, w = effective_weights(m, torch.tensor(L))
            if epoch < 2:
                np.testing.assert_allclose(w, 1 / (L + eps), rtol=1e-12)
                if epoch == 1:
                    collected.append(L)
            else:
                nadir = np.mean(collected, axis=0)
                f = np.log(L / nadir + eps)
                soft = np.exp((f - f.max()) / mu) / np.exp((f - f.max()) / mu).sum()
                np.testing.assert_allclose(w, n * soft / (L + eps * nadir), rtol=1e-10)
        m.epoch_end(torch.ones(n))


def test_famo_against_libmtl():
    """FAMO.py: z = softmax(w), D = L + 1e-8, the loss Σ log(D)·z/c with c = Σ z/D (so the
    effective weights are z/(cD)); after the step, w.grad = ∂(zᵀδ)/∂w with
    δ = log D_old − log D_new and one Adam step (lr, weight decay; written out here)."""
    rng = np.random.default_rng(6)
    n, lr, wd = 3, 0.025, 1e-3
    m = tb.create("famo", n, lr=lr, weight_decay=wd, eps=1e-8, update_from_next_step=False)
    assert isinstance(m, FAMO)
    w, m1, m2 = np.zeros(n), np.zeros(n), np.zeros(n)
    for step in range(1, 6):
        L = rng.uniform(0.2, 3.0, n)
        _, got = effective_weights(m, torch.tensor(L))
        z = np.exp(w - w.max()) / np.exp(w - w.max()).sum()
        D = L + 1e-8
        # Our logits and Adam moments are float32 buffers (as LibMTL's w): float32 rounding.
        np.testing.assert_allclose(got, z / D / (z / D).sum(), rtol=1e-6)
        new = L * rng.uniform(0.5, 1.0, n)
        m.update(torch.tensor(new))
        delta = np.log(D) - np.log(new + 1e-8)
        grad = z * (delta - z @ delta) + wd * w  # ∂(softmax(w)ᵀδ)/∂w, L2 decay as torch's Adam
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad**2
        w = w - lr * (m1 / (1 - 0.9**step)) / (np.sqrt(m2 / (1 - 0.999**step)) + 1e-8)


def test_excess_mtl_against_libmtl():
    """ExcessMTL.py: squared gradients accumulated, E_t = g_tᵀ diag(1/√(Σg² + 1e-7)) g_t; the
    first step sets the baselines (weights stay 1), then w ← w·exp(η E/E⁰), rescaled to sum T."""
    rng = np.random.default_rng(7)
    n, P, eta = 3, 8, 0.5
    m = tb.create("excess_mtl", n, robust_step_size=eta)
    assert isinstance(m, tb.GradientMethod)
    sq, w, base = np.zeros((n, P)), np.ones(n), None
    for _ in range(4):
        J = rng.standard_normal((n, P))
        d = m.aggregate(torch.tensor(J)).numpy()
        sq += J**2
        E = (J**2 / np.sqrt(sq + 1e-7)).sum(1)
        if base is None:
            base = E
        else:
            w = w * np.exp(eta * E / base)
            w = w / w.sum() * n
        np.testing.assert_allclose(d, w @ J, rtol=1e-9)


def test_sdmgrad_against_libmtl():
    """SDMGrad.py with one batch for its three: Â = G/(mean √G_tt)², n_iter SGD-with-momentum
    steps (a fresh optimiser each call, lr 5 in LibMTL) on Â(w + λ/n·1), each projected onto the
    simplex; d = (Jᵀw + λ·mean g)/(1 + λ). Its +1e-8 on the scale is the only difference."""
    rng = np.random.default_rng(8)
    n, lam, lr, iters = 3, 0.3, 5.0, 20
    m = gradient_method("sdmgrad", n, lamda=lam, lr=lr, n_iter=iters)
    w = np.full(n, 1.0 / n)

    def project(v):  # Euclidean projection onto the simplex (sort-based)
        u = np.sort(v)[::-1]
        css = np.cumsum(u) - 1
        k = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
        return np.clip(v - css[k] / (k + 1), 0, None)

    for _ in range(3):
        J = rng.standard_normal((n, 6))
        d = m.aggregate(torch.tensor(J)).numpy()
        G = J @ J.T
        A = G / (np.sqrt(np.diag(G)).mean() ** 2 + 1e-8)
        velocity = None
        for _ in range(iters):
            grad = A @ w + lam * A.mean(1)
            velocity = grad if velocity is None else 0.5 * velocity + grad
            w = project(w - lr * velocity)
        np.testing.assert_allclose(d, (w @ J + lam * J.mean(0)) / (1 + lam), rtol=1e-6)
