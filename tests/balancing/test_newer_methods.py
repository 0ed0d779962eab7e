"""CAGrad, Nash-MTL, Aligned-MTL, UPGrad and FAMO: golden values, properties, training.

Golden values are computed independently with numpy/scipy on the explicit problems of the
papers (SLSQP on CAGrad's dual, a root finder on Nash-MTL's fixed point, an SVD of J for
Aligned-MTL, scipy's NNLS for UPGrad's projections, a plain re-implementation of FAMO's updates).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from _typed import tensor_attr
from scipy.optimize import minimize, nnls, root
from torch import nn

import taskbalance as tb
from taskbalance.balancing.aggregation.aligned_mtl import aligned_balance_matrix
from taskbalance.balancing.aggregation.cagrad import project_simplex
from taskbalance.balancing.aggregation.upgrad import normalized_gramian
from taskbalance.balancing.weighting.famo import FAMO

sys.path.insert(0, os.path.dirname(__file__))
from _jacobians import degenerate_jacobian  # noqa: E402

GRADIENT_METHODS = ["cagrad", "nash_mtl", "aligned_mtl", "upgrad"]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-4, torch.float64: 1e-7}


# --------------------------------------------------------------------------- sampled matrices

SAMPLES = [degenerate_jacobian(s) for s in range(100)]


def aggregate(name: str, J: np.ndarray, dtype: torch.dtype, **options):
    m = tb.create(name, J.shape[0], **options)
    assert isinstance(m, tb.GradientMethod)
    Jt = torch.tensor(J, dtype=dtype)
    d = m.aggregate(Jt)
    assert d.dtype == dtype and d.shape == (J.shape[1],)
    assert m.last_weights is not None and m.last_weights.shape == (J.shape[0],)
    return d.double().numpy(), m.last_weights.double().numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# --------------------------------------------------------------------------- golden references
def ref_cagrad(J: np.ndarray, c: float, rescale: int) -> np.ndarray:
    G = J @ J.T
    n = len(G)
    w0 = np.full(n, 1.0 / n)
    g0 = J.T @ w0
    r = c * np.linalg.norm(g0)

    def f(w):
        return w @ (J @ g0) + r * np.sqrt(max(w @ G @ w, 0.0))

    best = None
    for start in [w0, *np.eye(n)]:
        res = minimize(
            f,
            start,
            method="SLSQP",
            bounds=[(0, 1)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 2000},
        )
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    gw = J.T @ best.x
    d = g0 + r / np.linalg.norm(gw) * gw
    return d / {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]


def ref_nash(J: np.ndarray) -> np.ndarray:
    G = J @ J.T
    sol = root(lambda a: G @ a - 1.0 / a, np.ones(len(G)) / np.sqrt(np.diag(G) * len(G)), tol=1e-13)
    assert (sol.x > 0).all() and np.abs(sol.x * (G @ sol.x) - 1).max() < 1e-10
    return J.T @ sol.x


def ref_aligned(J: np.ndarray) -> np.ndarray:
    U, S, _ = np.linalg.svd(J, full_matrices=False)
    B = S.min() * (U / S) @ U.T
    return J.T @ (B @ np.full(len(J), 1.0 / len(J)))


def ref_upgrad(J: np.ndarray) -> np.ndarray:
    projections = []
    for i in range(len(J)):
        mu, _ = nnls(J.T, -J[i])
        projections.append(J[i] + J.T @ mu)
    return np.mean(projections, axis=0)


GOLDEN_J = [
    np.array([[1.0, 0.0, 0.5], [-0.6, 1.0, 0.2]]),
    np.array([[2.0, 1.0, 0.0, -1.0], [-1.0, 0.5, 1.0, 0.0], [0.3, -2.0, 0.5, 1.0]]),
    np.random.default_rng(7).standard_normal((4, 9)),
    np.array([[1.0, 0.2], [0.9, 0.4]]),  # no conflict
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("J", GOLDEN_J, ids=range(len(GOLDEN_J)))
@pytest.mark.parametrize("c,rescale", [(0.4, 1), (0.8, 0), (0.2, 2)])
def test_cagrad_golden(J, dtype, c, rescale):
    d, _ = aggregate("cagrad", J, dtype, c=c, rescale=rescale)
    assert rel_err(d, ref_cagrad(J, c, rescale)) < max(TOL[dtype], 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("J", GOLDEN_J, ids=range(len(GOLDEN_J)))
def test_nash_mtl_golden(J, dtype):
    d, _ = aggregate("nash_mtl", J, dtype, max_norm=0.0)
    assert rel_err(d, ref_nash(J)) < TOL[dtype]
    d_clipped, _ = aggregate("nash_mtl", J, dtype)  # max_norm=1 (the paper's default)
    ref = ref_nash(J)
    assert rel_err(d_clipped, ref / max(1.0, np.linalg.norm(ref))) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("J", GOLDEN_J[:3], ids=range(3))
def test_aligned_mtl_golden(J, dtype):
    d, _ = aggregate("aligned_mtl", J, dtype)
    assert rel_err(d, ref_aligned(J)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("J", GOLDEN_J, ids=range(len(GOLDEN_J)))
def test_upgrad_golden(J, dtype):
    d, _ = aggregate("upgrad", J, dtype)
    assert rel_err(d, ref_upgrad(J)) < TOL[dtype]


def test_cagrad_solver_matches_scipy_on_random_problems():
    rng = np.random.default_rng(3)
    for _ in range(10):
        n = int(rng.integers(2, 6))
        J = rng.standard_normal((n, int(rng.integers(2, 8)))) + rng.standard_normal(1)
        d, _ = aggregate("cagrad", J, torch.float64, rescale=0)
        ref = ref_cagrad(J, 0.4, 0)
        # SLSQP is the less accurate of the two: compare the objective, then the direction.
        assert (J @ d).min() >= (J @ ref).min() - 1e-7
        assert rel_err(d, ref) < 1e-5


def test_project_simplex():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.standard_normal(int(rng.integers(1, 7))) * 3
        p = project_simplex(torch.tensor(v)).numpy()
        res = minimize(
            lambda x, v=v: ((x - v) ** 2).sum(),
            np.full(len(v), 1 / len(v)),
            method="SLSQP",
            bounds=[(0, None)] * len(v),
            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
            options={"ftol": 1e-14},
        )
        np.testing.assert_allclose(p, res.x, atol=1e-6)


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_finite_on_degenerate_matrices(name, dtype):
    for seed, (kind, J) in enumerate(SAMPLES):
        d, w = aggregate(name, J, dtype)
        assert np.isfinite(d).all() and np.isfinite(w).all(), (seed, kind)
        if kind in ("all_zero",):
            assert np.abs(d).max() == 0.0, (seed, kind)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_scale_behaviour(name):
    """d(sJ) = s·d(J) (Nash-MTL: d(sJ) = d(J)) for s from 1e-15 to 1e15."""
    J = np.random.default_rng(11).standard_normal((3, 6))
    d1, _ = aggregate(name, J, torch.float64, **({"max_norm": 0.0} if name == "nash_mtl" else {}))
    for s in (1e-15, 1e-5, 1e5, 1e15):
        ds, _ = aggregate(
            name, s * J, torch.float64, **({"max_norm": 0.0} if name == "nash_mtl" else {})
        )
        expected = d1 if name == "nash_mtl" else s * d1
        assert rel_err(ds, expected) < 1e-8, s


REFERENCES = {
    "cagrad": lambda J: ref_cagrad(J, 0.4, 1),
    "nash_mtl": ref_nash,
    "aligned_mtl": ref_aligned,
    "upgrad": ref_upgrad,
}


@pytest.mark.parametrize("scale", [1e-25, 1e-15, 1e15, 1e22, 1e30])
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_float32_gradients_far_from_one_match_the_golden_direction(name, scale):
    """float32 gradients whose squares under- or overflow float32 (|g| ~ 1e-25 or 1e22..1e30):
    d(sJ) = s·d(J) (Nash-MTL: d(J)) against the independent numpy reference."""
    J = GOLDEN_J[1]
    options = {"max_norm": 0.0} if name == "nash_mtl" else {}
    Js = torch.tensor(J * scale, dtype=torch.float32)
    assert torch.isfinite(Js).all()
    d, w = aggregate(name, Js.double().numpy(), torch.float32, **options)
    expected = REFERENCES[name](J) * (1.0 if name == "nash_mtl" else scale)
    assert np.isfinite(d).all() and np.isfinite(w).all()
    assert rel_err(d, expected) < TOL[torch.float32], (name, scale)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_output_dtype_and_device(name, dtype, device):
    J = torch.tensor(GOLDEN_J[2], dtype=dtype, device=device)
    m = tb.create(name, J.shape[0])
    assert isinstance(m, tb.GradientMethod)
    d = m.aggregate(J)
    assert d.dtype == dtype and d.device == J.device and d.shape == (J.shape[1],)
    assert m.last_weights is not None
    assert m.last_weights.dtype == dtype and m.last_weights.device == J.device
    # the weights are those of the direction: d = Σ_t w_t g_t
    torch.testing.assert_close(m.last_weights @ J, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_permutation_equivariance(name, dtype):
    rng = np.random.default_rng(5)
    for seed in range(8):
        kind, J = SAMPLES[seed * 3 % len(SAMPLES)]
        if kind in ("rank_deficient", "opposite", "zero_rows"):
            continue  # non-unique weights; d is still checked on the generic samples
        perm = rng.permutation(len(J))
        d, w = aggregate(name, J, dtype)
        dp, wp = aggregate(name, J[perm], dtype)
        scale = max(np.abs(d).max(), 1e-300)
        assert np.abs(dp - d).max() / scale < 10 * TOL[dtype], (name, seed)
        if kind != "identical":  # any weights summing alike are optimal for identical rows
            assert np.abs(wp - w[perm]).max() / max(np.abs(w).max(), 1e-300) < 10 * TOL[dtype]


def test_upgrad_never_conflicts_and_is_mean_without_conflict():
    for seed, (kind, J) in enumerate(SAMPLES):
        d, w = aggregate("upgrad", J, torch.float64)
        norms = np.linalg.norm(J, axis=1)
        # Relative tolerance, plus the rounding of d = wᵀJ itself.
        tol = 1e-9 * norms * np.linalg.norm(d) + 1e-12 * norms * (np.abs(w) @ norms)
        assert ((J @ d) >= -tol).all(), (seed, kind)
    rng = np.random.default_rng(1)
    for _ in range(20):
        J = np.abs(rng.standard_normal((int(rng.integers(2, 6)), 5)))  # pairwise non-conflicting
        d, w = aggregate("upgrad", J, torch.float64)
        np.testing.assert_allclose(d, J.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(w, np.full(len(J), 1 / len(J)), rtol=1e-10)


def test_nash_mtl_fixed_point():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(2, 6))
        J = rng.standard_normal((n, n + 4)) * 10.0 ** rng.uniform(-3, 3)
        for dtype in DTYPES:
            _, alpha = aggregate("nash_mtl", J, dtype, max_norm=0.0)
            G = J @ J.T
            np.testing.assert_allclose(alpha * (G @ alpha), 1.0, rtol=TOL[dtype] * 10)
            assert (alpha > 0).all()
    # Clipping (paper default max_norm=1): ‖d‖ = √n > 1 is clipped to 1.
    d, _ = aggregate("nash_mtl", rng.standard_normal((3, 5)), torch.float64)
    assert abs(np.linalg.norm(d) - 1.0) < 1e-9


def test_nash_mtl_update_weights_every():
    m = tb.create("nash_mtl", 2, max_norm=0.0, update_weights_every=3)
    assert isinstance(m, tb.GradientMethod)
    rng = np.random.default_rng(4)
    Js = [torch.tensor(rng.standard_normal((2, 4))) for _ in range(4)]
    weights = []
    for J in Js:
        m.aggregate(J)
        assert m.last_weights is not None
        weights.append(m.last_weights.clone())
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], weights[3])
    m.reset()
    m.aggregate(Js[1])
    assert m.last_weights is not None
    assert not torch.equal(m.last_weights, weights[0])


def test_aligned_mtl_aligned_gradients_are_orthonormal_up_to_scale():
    rng = np.random.default_rng(8)
    for _ in range(20):
        n = int(rng.integers(2, 6))
        J = rng.standard_normal((n, n + int(rng.integers(0, 5)))) * 10.0 ** rng.uniform(-4, 4)
        for dtype in DTYPES:
            Jt = torch.tensor(J, dtype=dtype)
            Gn, _ = normalized_gramian(Jt)
            B = aligned_balance_matrix(Gn, 10 * torch.finfo(dtype).eps).numpy()
            aligned = B @ J
            M = aligned @ aligned.T
            sigma_min = np.linalg.svd(J, compute_uv=False).min()
            tol = 1e-3 if dtype == torch.float32 else 1e-8
            np.testing.assert_allclose(M, sigma_min**2 * np.eye(n), atol=tol * sigma_min**2)
            d, w = aggregate("aligned_mtl", J, dtype)
            np.testing.assert_allclose(w, B.mean(1), rtol=tol, atol=tol)


def test_aligned_mtl_task_weights():
    J = np.random.default_rng(9).standard_normal((3, 5))
    d, _ = aggregate("aligned_mtl", J, torch.float64, task_weights=[1.0, 0.0, 0.0])
    U, S, _ = np.linalg.svd(J, full_matrices=False)
    np.testing.assert_allclose(d, J.T @ (S.min() * (U / S) @ U.T)[:, 0], rtol=1e-9)


def test_cagrad_properties():
    for seed, (kind, J) in enumerate(SAMPLES):
        if kind in ("all_zero",):
            continue
        d, _ = aggregate("cagrad", J, torch.float64, rescale=0)
        g0 = J.mean(0)
        scale = max(np.linalg.norm(J, axis=1).max(), 1e-300)
        # In the ball around g_0 ...
        assert np.linalg.norm(d - g0) <= 0.4 * np.linalg.norm(g0) * (1 + 1e-6) + 1e-12 * scale
        # ... and no worse than g_0 on the worst task.
        assert (J @ d).min() >= (J @ g0).min() - 1e-9 * scale**2, (seed, kind)
    J = SAMPLES[0][1]
    d, _ = aggregate("cagrad", J, torch.float64, c=0.0)
    np.testing.assert_allclose(d, J.mean(0), rtol=1e-12)
    d1, _ = aggregate("cagrad", J, torch.float64, rescale=1)
    d0, _ = aggregate("cagrad", J, torch.float64, rescale=0)
    np.testing.assert_allclose(d1 * 1.16, d0, rtol=1e-12)


# --------------------------------------------------------------------------- FAMO
class RefFAMO:
    """Plain numpy FAMO (Liu et al. 2023): softmax logits, Adam with L2 weight decay."""

    def __init__(self, T, lr=0.025, wd=0.001, eps=1e-8):
        self.xi = np.zeros(T)
        self.m = np.zeros(T)
        self.v = np.zeros(T)
        self.t = 0
        self.lr, self.wd, self.eps = lr, wd, eps

    def weights(self, L):
        z = np.exp(self.xi - self.xi.max())
        z /= z.sum()
        inv = z / (L + self.eps)
        return inv / inv.sum()

    def update(self, old, new):
        z = np.exp(self.xi - self.xi.max())
        z /= z.sum()
        delta = np.log(old + self.eps) - np.log(new + self.eps)
        g = z * (delta - z @ delta) + self.wd * self.xi
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        mh = self.m / (1 - 0.9**self.t)
        vh = self.v / (1 - 0.999**self.t)
        self.xi = self.xi - self.lr * mh / (np.sqrt(vh) + 1e-8)


def famo_grad_weights(m, L: torch.Tensor) -> np.ndarray:
    """The effective loss weights, read off the autograd gradient of combine(L)."""
    L = L.clone().requires_grad_(True)
    m.combine(L).backward()
    assert L.grad is not None
    return L.grad.double().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
def test_famo_golden_next_step_variant(dtype):
    rng = np.random.default_rng(0)
    seq = [rng.uniform(0.1, 3.0, 3) for _ in range(6)]
    m = tb.create("famo", 3)
    ref = RefFAMO(3)
    prev = None
    for L in seq:
        if prev is not None:
            ref.update(prev, L)
        w = famo_grad_weights(m, torch.tensor(L, dtype=dtype))
        np.testing.assert_allclose(w, ref.weights(L), rtol=TOL[dtype] * 10)
        assert m.last_weights is not None
        np.testing.assert_allclose(m.last_weights.double().numpy(), ref.weights(L), rtol=1e-4)
        prev = L
    logits = tensor_attr(m, "logits").double().numpy()
    np.testing.assert_allclose(logits, ref.xi, rtol=1e-4, atol=1e-7)
    assert np.abs(ref.xi).max() > 0.01


def test_famo_explicit_update_and_no_update():
    rng = np.random.default_rng(1)
    m = tb.create("famo", 2, update_from_next_step=False)
    assert isinstance(m, FAMO)
    ref = RefFAMO(2)
    for _ in range(4):
        L, L_after = rng.uniform(0.5, 2, 2), rng.uniform(0.1, 2, 2)
        w = famo_grad_weights(m, torch.tensor(L))
        np.testing.assert_allclose(w, ref.weights(L), rtol=1e-6)
        m.update(torch.tensor(L_after))
        m.update(torch.tensor(L_after))  # second call without combine: no-op
        ref.update(L, L_after)
    logits = tensor_attr(m, "logits").double().numpy()
    np.testing.assert_allclose(logits, ref.xi, rtol=1e-4, atol=1e-7)
    # Without update() calls the weights stay the fixed ones: w ∝ 1/(L + ε).
    m2 = tb.create("famo", 2, update_from_next_step=False)
    for _ in range(3):
        L = rng.uniform(0.5, 2, 2)
        np.testing.assert_allclose(famo_grad_weights(m2, torch.tensor(L)), (1 / L) / (1 / L).sum())
    assert tensor_attr(m2, "logits").abs().max() == 0
    m.reset()
    assert tensor_attr(m, "logits").abs().max() == 0


def test_famo_permutation_and_degenerate_losses():
    rng = np.random.default_rng(2)
    L = rng.uniform(0.1, 2, 4)
    perm = rng.permutation(4)
    a, b = tb.create("famo", 4), tb.create("famo", 4)
    for _ in range(3):
        L = L * rng.uniform(0.5, 1.0, 4)
        wa = famo_grad_weights(a, torch.tensor(L))
        wb = famo_grad_weights(b, torch.tensor(L[perm]))
        np.testing.assert_allclose(wb, wa[perm], rtol=1e-6)  # float32 logits
    m = tb.create("famo", 3)
    for extreme in ([0.0, 0.0, 0.0], [1e-15, 1e15, 0.0], [0.0, 1.0, 1e-30], [1e15, 1e15, 1e15]):
        w = famo_grad_weights(m, torch.tensor(extreme))
        assert np.isfinite(w).all() and abs(w.sum() - 1) < 1e-6, extreme


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "name,options,needle",
    [
        ("cagrad", {"c": -1.0}, "-1.0"),
        ("cagrad", {"rescale": 3}, "3"),
        ("cagrad", {"max_iter": 0}, "0"),
        ("nash_mtl", {"max_norm": -2.0}, "-2.0"),
        ("nash_mtl", {"update_weights_every": 0}, "0"),
        ("aligned_mtl", {"task_weights": [1.0]}, "[1.0]"),
        ("aligned_mtl", {"eps": 2.0}, "2.0"),
        ("upgrad", {"pref_weights": [1.0, -1.0]}, "-1.0"),
        ("upgrad", {"pref_weights": [0.0, 0.0]}, "0.0"),
        ("famo", {"lr": 0.0}, "0.0"),
        ("famo", {"weight_decay": float("nan")}, "nan"),
        ("famo", {"update_from_next_step": "yes"}, "yes"),
    ],
)
def test_bad_options(name, options, needle):
    with pytest.raises(ValueError, match=None) as err:
        tb.create(name, 2, **options)
    assert needle in str(err.value) and next(iter(options)) in str(err.value)


def test_registry_lists_the_methods():
    for name in [*GRADIENT_METHODS, "famo"]:
        info = tb.method_info(name)
        assert "arXiv" in info.paper
    assert tb.method_info("famo").kind == "loss"


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


@pytest.mark.parametrize(
    "name,mode",
    [(m, mode) for m in GRADIENT_METHODS for mode in ("param", "rep")] + [("famo", "param")],
)
def test_trains_a_two_head_net(name, mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    ya = (x[:, :1] * 2 - x[:, 1:2]).sin()
    yb = x[:, 2:3] * x[:, 3:4] * 3.0
    net = TwoHead()
    method = tb.create(name, 2)
    balancer = tb.Balancer(method, net.shared.parameters(), mode=mode)
    opt = torch.optim.Adam([*net.parameters(), *balancer.parameters()], lr=0.02)

    def losses():
        z, pa, pb = net(x)
        return z, {"a": (pa - ya).pow(2).mean(), "b": (pb - yb).pow(2).mean()}

    with torch.no_grad():
        _, start = losses()
    for _ in range(60):
        opt.zero_grad()
        z, ls = losses()
        info = balancer.backward(ls, features=z if mode == "rep" else None)
        assert info.weights is not None and torch.isfinite(info.weights).all()
        opt.step()
    with torch.no_grad():
        _, end = losses()
    for k in "ab":
        assert end[k] < 0.8 * start[k], (k, float(start[k]), float(end[k]))


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "famo"])
def test_missing_task_in_a_batch(name):
    net = TwoHead()
    method = tb.create(name, 3)
    balancer = tb.Balancer(method, net.shared.parameters())
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


def test_math_helpers_are_consistent():
    # ‖d‖² = n for the exact Nash solution (Σ_t α_t g_tᵀd = n).
    J = np.random.default_rng(12).standard_normal((4, 7))
    d, _ = aggregate("nash_mtl", J, torch.float64, max_norm=0.0)
    assert math.isclose(float(d @ d), 4.0, rel_tol=1e-9)
