"""FairGrad, DualProj, ConFIG, MoDo, SDMGrad, ExcessMTL, DB-MTL and MoCo.

References, each computed independently of the code under test:

* torchjd 0.18 (installed): ``ConFIG``, ``FairGradWeighting`` (scipy ``least_squares``),
  ``MoDoWeighting`` and ``SDMGradWeighting`` (fed the single-batch Gramian ``J Jᵀ``, the only
  variant the Balancer can give); torchjd's ``DualProj`` needs ``quadprog`` (not installed) and
  regularises the Gramian, so DualProj is checked against scipy's NNLS on its definition.
* LibMTL (median-research-group/LibMTL), read for the definitions and re-written in numpy here:
  ``LibMTL/weighting/ExcessMTL.py`` at b65c914, ``DB_MTL.py`` at 7b0f56a, ``MoCo.py`` at 8b8f1d0.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from _methods import one_batch
from scipy.optimize import nnls
from torch import nn

import taskbalance as tb

sys.path.insert(0, os.path.dirname(__file__))
from _jacobians import degenerate_jacobian  # noqa: E402
from _typed import gradient_method

torchjd_agg = pytest.importorskip("torchjd.aggregation")

DTYPES = [torch.float32, torch.float64]
GRAM_METHODS = ["fairgrad", "dualproj", "config", "modo", "sdmgrad"]
STATE_METHODS = ["excess_mtl", "db_mtl", "moco"]
NEW_METHODS = GRAM_METHODS + STATE_METHODS


SAMPLES = [degenerate_jacobian(s, task_counts=3, row_scale=15) for s in range(40)]


def run(name: str, Js, dtype=torch.float64, losses=None, **options):
    """Aggregate a sequence of J (one method object); returns the directions and weights."""
    m = tb.create(name, Js[0].shape[0], **options)
    assert isinstance(m, tb.GradientMethod)
    out = []
    for k, J in enumerate(Js):
        Jt = torch.as_tensor(J, dtype=dtype)
        L = None if losses is None else torch.as_tensor(losses[k], dtype=dtype)
        d = m.aggregate(Jt, L)
        assert d.dtype == dtype and d.shape == (Jt.shape[1],)
        assert m.last_weights is not None
        out.append((d.double().numpy(), m.last_weights.double().numpy()))
    return m, out


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# --------------------------------------------------------------------------- degenerate input
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NEW_METHODS)
def test_finite_on_degenerate_matrices(name, dtype):
    for seed, (kind, J) in enumerate(SAMPLES):
        # two steps: the stateful methods see their state used, not only initialised
        _, out = run(name, [J, 0.5 * J], dtype, losses=np.ones((2, len(J))))
        for d, w in out:
            assert np.isfinite(d).all() and np.isfinite(w).all(), (name, seed, kind, dtype)
            if kind == "all_zero":
                assert np.abs(d).max() == 0.0, (name, seed)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_output_dtype_device_and_shapes(name):
    J = np.random.default_rng(0).standard_normal((3, 6))
    for dtype in DTYPES:
        m, [(d, w)] = run(name, [J], dtype)
        assert m.last_weights.dtype == dtype and not m.last_weights.requires_grad
    with pytest.raises(ValueError, match="shape"):
        gradient_method(name, 3).aggregate(torch.randn(2, 5))


@pytest.mark.parametrize("name", GRAM_METHODS + ["excess_mtl"])
def test_direction_is_the_weighted_sum_of_the_gradients(name):
    Js = [np.random.default_rng(s).standard_normal((3, 6)) for s in range(3)]
    _, out = run(name, Js)
    for J, (d, w) in zip(Js, out, strict=True):
        np.testing.assert_allclose(d, w @ J, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_gramian_only_path_gives_the_same_weights(name):
    """``weights(G)`` (no J held: the Balancer's Gramian-only path) equals ``aggregate(J)``."""
    J = np.random.default_rng(3).standard_normal((3, 6))
    _, [(d, w)] = run(name, [J])
    w_gram = gradient_method(name, 3).weights(torch.tensor(J @ J.T)).numpy()
    np.testing.assert_allclose(w_gram, w, rtol=1e-10)
    np.testing.assert_allclose(w_gram @ J, d, rtol=1e-10, atol=1e-14)
    assert tb.create(name, 3).uses_gramian


@pytest.mark.parametrize("name", STATE_METHODS)
def test_methods_that_need_j_refuse_the_gramian_only_path(name):
    m = gradient_method(name, 2)
    assert not m.uses_gramian
    with pytest.raises(ValueError, match="aggregate"):
        m.weights(torch.eye(2))


@pytest.mark.parametrize("name", ["dualproj", "config"])
def test_scale_equivariance(name):
    J = np.random.default_rng(4).standard_normal((3, 5))
    _, [(d1, _)] = run(name, [J])
    for s in (1e-15, 1e-5, 1e5, 1e15):
        _, [(ds, _)] = run(name, [s * J])
        assert rel(ds, s * d1) < 1e-9, s
        _, [(d32, _)] = run(name, [s * J], torch.float32)
        assert rel(d32, s * d1) < 1e-4, s


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_permuting_tasks_permutes_weights(name):
    rng = np.random.default_rng(5)
    J = rng.standard_normal((4, 7))
    perm = np.array([2, 0, 3, 1])
    _, out = run(name, [J, 0.7 * J])
    _, outp = run(name, [J[perm], 0.7 * J[perm]])
    for (d, w), (dp, wp) in zip(out, outp, strict=True):
        assert rel(dp, d) < 1e-9 and rel(wp, w[perm]) < 1e-9


# --------------------------------------------------------------------------- FairGrad
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_matches_torchjd_least_squares(alpha):
    ref = torchjd_agg.FairGradWeighting(alpha=alpha, max_iters=10_000)
    for seed in range(4):
        J = np.random.default_rng(seed).standard_normal((3 + seed % 2, 8))
        G = torch.tensor(J @ J.T)
        expected = ref(G).numpy()
        _, [(d, w)] = run("fairgrad", [J], alpha=alpha)
        assert rel(w, expected) < 1e-6, (alpha, seed)
        # the defining equation G w = w^{-1/α}, to solver precision
        np.testing.assert_allclose(J @ J.T @ w, w ** (-1.0 / alpha), rtol=1e-8)


def test_fairgrad_scaling_and_options():
    J = np.random.default_rng(6).standard_normal((3, 5))
    for alpha in (0.5, 2.0):
        _, [(d1, _)] = run("fairgrad", [J], alpha=alpha)
        for s in (1e-10, 1e10):
            _, [(ds, _)] = run("fairgrad", [s * J], alpha=alpha)
            # w(sJ) = s^{-2α/(1+α)} w(J), hence d(sJ) = s^{(1−α)/(1+α)} d(J)
            assert rel(ds, s ** ((1 - alpha) / (1 + alpha)) * d1) < 1e-8
    for bad in ({"alpha": 0.0}, {"alpha": -1.0}, {"max_iter": 0}, {"tol": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tb.create("fairgrad", 2, **bad)
    with pytest.raises(RuntimeError, match="did not converge"):
        one_iteration = gradient_method("fairgrad", 3, max_iter=1)
        one_iteration.aggregate(torch.tensor(J * [[1.0], [1e-6], [1e3]]))


# --------------------------------------------------------------------------- DualProj / ConFIG
def test_dualproj_is_the_projection_of_the_mean_onto_the_dual_cone():
    for seed in range(6):
        J = np.random.default_rng(seed).standard_normal((3, 6))
        J[1] = -0.8 * J[0] + 0.3 * J[1]
        p = np.full(3, 1 / 3) if seed % 2 == 0 else np.array([0.5, 0.3, 0.2])
        opts = {} if seed % 2 == 0 else {"pref_weights": [5.0, 3.0, 2.0]}
        mu, _ = nnls(J.T, -J.T @ p)  # dual of min ‖x − Jᵀp‖² s.t. J x ≥ 0
        expected = J.T @ (p + mu)
        _, [(d, _)] = run("dualproj", [J], **opts)
        assert rel(d, expected) < 1e-9
        assert (J @ d >= -1e-10 * np.abs(J @ d).max()).all()
    J = np.array([[1.0, 0.2], [0.8, 0.5]])  # no conflict: the mean itself
    _, [(d, _)] = run("dualproj", [J])
    np.testing.assert_allclose(d, J.mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="pref_weights"):
        tb.create("dualproj", 2, pref_weights=[0.0, 0.0])


def dual_cone_projection(J, v):
    """``Jᵀv`` projected onto ``{x : J x ≥ 0}`` (nnls on the dual, independent of the solver)."""
    mu, _ = nnls(J.T, -J.T @ v)
    return J.T @ (v + mu)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_pref_weights_are_renormalised_over_the_tasks_present(name):
    J = np.random.default_rng(7).standard_normal((3, 6))
    J[1] = -0.8 * J[0] + 0.3 * J[1]

    def expected(Jp, p):
        if name == "dualproj":
            return dual_cone_projection(Jp, p)
        return sum(p[i] * dual_cone_projection(Jp, np.eye(len(p))[i]) for i in range(len(p)))

    _, [(d, _)] = run(name, [J], pref_weights=[5.0, 3.0, 2.0])
    assert rel(d, expected(J, np.array([0.5, 0.3, 0.2]))) < 1e-9
    sub = J[[0, 2]]
    G = torch.tensor(sub @ sub.T)
    present = torch.tensor([True, False, True])
    for pref, p in (([5.0, 3.0, 2.0], [5 / 7, 2 / 7]), ([0.0, 3.0, 0.0], [0.5, 0.5])):
        m = gradient_method(name, 3, pref_weights=pref)
        w = m.solve(G, None, present, dtype=torch.float64, device=torch.device("cpu"))
        assert rel(sub.T @ w.numpy(), expected(sub, np.array(p))) < 1e-9, pref


def test_config_matches_torchjd_and_has_equal_cosines():
    ref = torchjd_agg.ConFIG()
    for seed, (kind, J) in enumerate(SAMPLES):
        expected = ref(torch.tensor(J)).numpy()
        _, [(d, _)] = run("config", [J])
        scale = max(np.abs(J).max() * len(J), 1e-300)
        if kind in ("random", "conflicting", "identical", "tiny", "huge", "zero_rows"):
            assert np.abs(d - expected).max() < 1e-9 * scale, (seed, kind)
    J = np.random.default_rng(9).standard_normal((3, 6))
    _, [(d, _)] = run("config", [J])
    cos = J @ d / (np.linalg.norm(J, axis=1) * np.linalg.norm(d))
    np.testing.assert_allclose(cos, cos[0], rtol=1e-10)
    assert (cos > 0).all()


# --------------------------------------------------------------------------- MoDo / SDMGrad
def test_modo_and_sdmgrad_match_torchjd_over_steps():
    rng = np.random.default_rng(10)
    # torchjd's SDMGrad adds 1e-8 to the squared mean gradient norm (the authors' code does
    # too; this one does not): gradients of norm ~1e4 make that term vanish in float64.
    Js = [1e4 * rng.standard_normal((3, 6)) for _ in range(5)]
    modo_ref = torchjd_agg.MoDoWeighting(gamma=5e-10, rho=0.1)
    sdm_ref = torchjd_agg.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3)
    _, modo = run("modo", Js, gamma=5e-10, rho=0.1)
    _, sdm = run("sdmgrad", Js)
    for J, (d, w), (ds, ws) in zip(Js, modo, sdm, strict=True):
        np.testing.assert_allclose(d, w @ J, rtol=1e-12)
        G = torch.tensor(J @ J.T)
        assert rel(w, modo_ref(G).numpy()) < 1e-12
        assert rel(ws, sdm_ref(G).numpy()) < 1e-9  # 20 inner steps of rounding
        np.testing.assert_allclose(ds, ws @ J, rtol=1e-12)


# --------------------------------------------------------------------------- ExcessMTL
def excess_libmtl(Js, step):
    """LibMTL's ExcessMTL (b65c914): weights 1, AdaGrad sums, the first step's excess risks as
    the baseline, then w ← w exp(η E/E⁰), renormalised to sum T."""
    T = len(Js[0])
    w = np.ones(T)
    S = np.zeros_like(Js[0])
    base = None
    out = []
    for J in Js:
        S = S + J**2
        E = (J * J / np.sqrt(S + 1e-7)).sum(1)
        if base is None:
            base = E
        else:
            w = w * np.exp(step * E / base)
            w = w / w.sum() * T
        out.append(w.copy())
    return out


def test_excess_mtl_matches_libmtl_recipe():
    rng = np.random.default_rng(11)
    Js = [rng.standard_normal((3, 7)) * [[1.0], [3.0], [0.2]] for _ in range(6)]
    for step in (1e-2, 0.5):
        _, out = run("excess_mtl", Js, robust_step_size=step)
        for (_, w), expected in zip(out, excess_libmtl(Js, step), strict=True):
            np.testing.assert_allclose(w, expected, rtol=1e-12)


# --------------------------------------------------------------------------- DB-MTL
def dbmtl_libmtl(Js, beta, sigma):
    """LibMTL's DB_MTL (7b0f56a), gradient part: buffer ← g + β/k^σ (buffer − g),
    α_t = max‖buf‖/‖buf_t‖, d = Σ α_t buf_t (without the 1e-8, see the method's docstring)."""
    buf = np.zeros_like(Js[0])
    out = []
    for k, J in enumerate(Js, start=1):
        buf = J + beta / k**sigma * (buf - J)
        u = np.linalg.norm(buf, axis=1)
        alpha = u.max() / u
        out.append((alpha @ buf, alpha))
    return out


@pytest.mark.parametrize("beta,sigma", [(0.9, 0.0), (0.5, 0.5)])
def test_db_mtl_matches_libmtl_recipe(beta, sigma):
    rng = np.random.default_rng(12)
    Js = [rng.standard_normal((3, 5)) * [[1.0], [100.0], [0.01]] for _ in range(5)]
    _, out = run("db_mtl", Js, beta=beta, beta_sigma=sigma)
    for (d, w), (d_ref, a_ref) in zip(out, dbmtl_libmtl(Js, beta, sigma), strict=True):
        np.testing.assert_allclose(d, d_ref, rtol=1e-12)
        np.testing.assert_allclose(w, a_ref, rtol=1e-12)


def test_db_mtl_log_losses_through_the_balancer():
    """The Balancer differentiates log(L_t + ε): J's rows are ∇L_t / (L_t + ε)."""
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(2, 3))
    x = torch.randn(3)
    method = tb.create("db_mtl", 2, beta=0.0)  # β = 0: the update uses this step's gradients
    bal = tb.Balancer(method, [W])
    L = [(W[0] @ x) ** 2 + 1.0, 5.0 * (W[1] @ x - 1) ** 2 + 0.5]
    g = [torch.autograd.grad(li, W, retain_graph=True)[0].flatten() for li in L]
    rows = [gi / (li.detach() + 1e-8) for gi, li in zip(g, L, strict=True)]
    norms = torch.stack([r.norm() for r in rows])
    expected = sum(norms.max() / n * r for n, r in zip(norms, rows, strict=True))
    bal.backward(L)
    assert W.grad is not None
    torch.testing.assert_close(W.grad.flatten(), expected)
    # the Balancer checks the sign with its finite check, naming the task
    named = tb.Balancer(tb.create("db_mtl", 2), [W], task_names=["a", "b"])
    with pytest.raises(ValueError, match="'db_mtl'.*non-negative.*task 'b' is -2.0"):
        named.backward({"a": W.sum() ** 2, "b": W.sum() * 0 - 2.0})
    with pytest.raises(ValueError, match="task 1 is -2.0"):
        gradient_method("db_mtl", 2).aggregate(torch.ones(2, 3), torch.tensor([1.0, -2.0]))


# --------------------------------------------------------------------------- MoCo
def project_simplex_np(v):
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    k = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[k] / (k + 1), 0)


def moco_reference(Js, losses, beta, bs, gamma, gs, rho, softmax, normalize):
    """MoCo's tracking and weight updates (LibMTL MoCo.py at 8b8f1d0 with softmax and the
    loss normalisation; the paper's simplex projection otherwise), in numpy."""
    T = len(Js[0])
    y = np.zeros_like(Js[0])
    lam = np.full(T, 1 / T)
    out = []
    for k, (J, L) in enumerate(zip(Js, losses, strict=True), start=1):
        h = J / np.linalg.norm(J, axis=1, keepdims=True) * L[:, None] if normalize else J
        y = y - beta / k**bs * (y - h)
        z = lam - gamma / k**gs * (y @ y.T + rho * np.eye(T)) @ lam
        lam = np.exp(z - z.max()) / np.exp(z - z.max()).sum() if softmax else project_simplex_np(z)
        out.append((y.T @ lam, lam.copy()))
    return out


@pytest.mark.parametrize("variant", ["paper", "libmtl"])
def test_moco_matches_reference(variant):
    rng = np.random.default_rng(13)
    Js = [rng.standard_normal((3, 6)) for _ in range(6)]
    losses = [rng.uniform(0.5, 2.0, 3) for _ in range(6)]
    opts = {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.3, "gamma_sigma": 0.5, "rho": 0.1}
    softmax = variant == "libmtl"
    extra = {"simplex": "softmax", "normalize": "loss"} if softmax else {}
    _, out = run("moco", Js, losses=losses, **opts, **extra)
    ref = moco_reference(Js, losses, 0.5, 0.5, 0.3, 0.5, 0.1, softmax, softmax)
    for (d, w), (d_ref, w_ref) in zip(out, ref, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="losses"):
        gradient_method("moco", 3, normalize="loss").aggregate(torch.tensor(Js[0]))


# --------------------------------------------------------------------------- state
STATEFUL = ["modo", "sdmgrad", "excess_mtl", "db_mtl", "moco"]


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_resumes_exactly_and_reset_restarts(name):
    rng = np.random.default_rng(14)
    Js = [torch.tensor(rng.standard_normal((3, 6))) for _ in range(6)]
    a = tb.create(name, 3)
    assert isinstance(a, tb.GradientMethod)
    first = a.aggregate(Js[0]).clone()
    for J in Js[1:3]:
        a.aggregate(J)
    b = gradient_method(name, 3)
    b.load_state_dict(a.state_dict())
    for J in Js[3:]:
        torch.testing.assert_close(a.aggregate(J), b.aggregate(J), rtol=0, atol=0)
    a.reset()
    torch.testing.assert_close(a.aggregate(Js[0]), first, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_row_norms_match_float64_norms_at_extreme_scales(dtype):
    from taskbalance.balancing._per_parameter_state import device_gramian, device_row_norms

    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 50))
    base[2] = 0.0  # a zero row has norm 0
    scales = np.array([1e-30, 1.0, 1.0, 1e30])[:, None]  # float32 squares under/overflow
    Y = torch.tensor(base * scales, dtype=dtype)
    expected = np.linalg.norm(Y.double().numpy() / scales, axis=1) * scales[:, 0]
    norms = device_row_norms(Y)
    assert norms.dtype == torch.float64 and norms.shape == (4,)
    np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-6)
    # the diagonal of device_gramian, which db_mtl and moco used to compute in full for this
    diag = device_gramian(Y).diagonal().sqrt()
    np.testing.assert_allclose(norms.numpy(), diag.numpy(), rtol=1e-6)


def test_device_row_norms_of_half_rows_longer_than_the_half_range():
    from taskbalance.balancing._per_parameter_state import device_row_norms

    Y = torch.ones(2, 70_000, dtype=torch.float16)  # Σ squares = 70000 > float16 max 65504
    Y[1] *= 0.5
    np.testing.assert_allclose(device_row_norms(Y).numpy(), [70_000**0.5, 0.5 * 70_000**0.5])


def test_db_mtl_half_gradients_longer_than_the_half_range():
    # ‖g_t‖² = P·c² exceeds float16's max (65504): the weights must still be the float32 ones
    J = torch.ones(2, 70_000)
    J[1] *= 0.5
    ref = tb.create("db_mtl", 2)
    assert isinstance(ref, tb.GradientMethod)
    ref.aggregate(J)
    m = tb.create("db_mtl", 2)
    assert isinstance(m, tb.GradientMethod)
    m.aggregate(J.half())
    assert m.last_weights is not None and ref.last_weights is not None
    torch.testing.assert_close(m.last_weights.float(), ref.last_weights, rtol=1e-3, atol=0)


def test_moco_half_gradients_longer_than_the_half_range():
    # MoCo's Gramian of its tracked gradients has entries of order P = 70000 > float16's max
    J = torch.ones(2, 70_000)
    J[1] *= -0.5
    losses = torch.tensor([1.0, 2.0])
    ref = tb.create("moco", 2)
    assert isinstance(ref, tb.GradientMethod)
    ref.aggregate(J, losses)
    m = tb.create("moco", 2)
    assert isinstance(m, tb.GradientMethod)
    m.aggregate(J.half(), losses.half())
    assert m.last_weights is not None and ref.last_weights is not None
    torch.testing.assert_close(m.last_weights.float(), ref.last_weights, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["excess_mtl", "db_mtl", "moco"])
def test_per_parameter_state_refuses_another_width(name):
    m = tb.create(name, 2)
    assert isinstance(m, tb.GradientMethod)
    m.aggregate(torch.randn(2, 5))
    with pytest.raises(ValueError, match="P=5.*P=7.*param"):
        m.aggregate(torch.randn(2, 7))


@pytest.mark.parametrize("name", STATE_METHODS)
def test_per_parameter_methods_refuse_rep_mode(name):
    with pytest.raises(ValueError, match="mode='param'"):
        tb.Balancer(tb.create(name, 2), [nn.Parameter(torch.ones(3))], mode="rep")
    tb.Balancer(tb.create(name, 2), [nn.Parameter(torch.ones(3))], mode="param")


@pytest.mark.parametrize(
    "name,options,word",
    [
        ("modo", {"gamma": 0.0}, "gamma"),
        ("modo", {"rho": -1.0}, "rho"),
        ("sdmgrad", {"lamda": -0.1}, "lamda"),
        ("sdmgrad", {"n_iter": 0}, "n_iter"),
        ("sdmgrad", {"momentum": 1.0}, "momentum"),
        ("sdmgrad", {"lr": float("inf")}, "lr"),
        ("excess_mtl", {"robust_step_size": 0.0}, "robust_step_size"),
        ("db_mtl", {"beta": 1.0}, "beta"),
        ("db_mtl", {"beta_sigma": -1.0}, "beta_sigma"),
        ("db_mtl", {"eps": 0.0}, "eps"),
        ("moco", {"beta": 0.0}, "beta"),
        ("moco", {"gamma": -1.0}, "gamma"),
        ("moco", {"simplex": "sparsemax"}, "simplex"),
        ("moco", {"normalize": "l2"}, "normalize"),
        ("config", {"pref_weights": [1.0, 1.0]}, "pref_weights"),
    ],
)
def test_bad_options(name, options, word):
    with pytest.raises(ValueError, match=word):
        tb.create(name, 2, **options)


def test_registry_lists_them_with_arxiv_ids():
    for name in NEW_METHODS + ["gls", "stch"]:
        info = tb.method_info(name)
        assert "arXiv:" in info.paper and info.summary, name
        assert name in tb.available_methods()


# --------------------------------------------------------------------------- training
class TwoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.a = nn.Linear(16, 1)
        self.b = nn.Linear(16, 1)

    def forward(self, x):
        z = self.shared(x)
        return z, self.a(z), self.b(z)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_trains_a_two_head_net(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    ya = (x[:, :1] * 2 - x[:, 1:2]).sin()
    yb = x[:, 2:3] * x[:, 3:4] * 3.0
    net = TwoHead()
    balancer = tb.Balancer(tb.create(name, 2, **one_batch(name)), net.shared.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.02)

    def losses():
        _, pa, pb = net(x)
        return {"a": (pa - ya).pow(2).mean(), "b": (pb - yb).pow(2).mean()}

    with torch.no_grad():
        start = losses()
    for _ in range(60):
        opt.zero_grad()
        info = balancer.backward(losses())
        assert info.weights is not None and torch.isfinite(info.weights).all()
        opt.step()
    with torch.no_grad():
        end = losses()
    for k in "ab":
        assert end[k] < 0.8 * start[k], (name, k, float(start[k]), float(end[k]))


@pytest.mark.parametrize("name", NEW_METHODS)
def test_missing_task_in_a_batch(name):
    net = TwoHead()
    balancer = tb.Balancer(tb.create(name, 3, **one_batch(name)), net.shared.parameters())
    x = torch.randn(8, 4)
    for absent in (None, "c", "a", None):
        _, pa, pb = net(x)
        ls = {"a": pa.pow(2).mean(), "b": (pb - 1).pow(2).mean(), "c": (pa + pb).pow(2).mean()}
        if absent is not None:
            ls[absent] = None
        net.zero_grad()
        info = balancer.backward(ls)
        assert info.weights is not None
        assert torch.isfinite(info.weights).all()
        if absent is not None:
            assert float(info.weights[["a", "b", "c"].index(absent)]) == 0.0
        assert all(
            p.grad is not None and torch.isfinite(p.grad).all() for p in net.shared.parameters()
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_moco_combine_rows_by_column_blocks_equals_one_float64_piece(monkeypatch, dtype):
    from taskbalance.balancing.aggregation import moco

    gen = torch.Generator().manual_seed(3)
    J = (torch.randn(3, 10, generator=gen) * 100).to(dtype)
    scale = torch.tensor([1e3, 0.5, 0.0], dtype=torch.float64)  # 1e3 x 100 overflows float16
    big = torch.finfo(dtype).max
    expected = (J.to(torch.float64) * scale[:, None]).clamp(-big, big).to(dtype)
    monkeypatch.setattr(moco, "_COLUMNS", 3)  # blocks of 3, 3, 3, 1 columns
    out = moco.combine_rows(scale, J)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert bool(torch.isfinite(out).all())
