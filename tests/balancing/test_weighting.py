"""Loss-weighting methods: golden values computed independently (numpy / by hand), properties
(permutation, scale, absent tasks, seeds, state), option validation and a tiny training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import taskbalance
from taskbalance.balancing.weighting.imtl_l import imtl_l_transform
from taskbalance.balancing.weighting.rlw import sample_log_gamma

DTYPES = [torch.float32, torch.float64]
METHODS = ["scaled", "uw", "gradnorm", "dwa", "rlw", "imtl_l"]
DETERMINISTIC = ["scaled", "uw", "gradnorm", "dwa", "imtl_l"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


def close(actual, expected, dtype):
    np.testing.assert_allclose(
        np.asarray(torch.as_tensor(actual).detach().cpu().double()), expected, **tol(dtype)
    )


def create(name, num_tasks, **options):
    if name == "rlw":
        options.setdefault("seed", 0)
    return taskbalance.create(name, num_tasks, **options)


def learnable(method):
    """The method's single learnable vector (or None)."""
    params = list(method.parameters())
    return params[0] if params else None


def np_softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


# ---------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", METHODS)
def test_registered_as_loss_methods_with_paper_and_formula(name):
    info = taskbalance.method_info(name)
    assert info.kind == "loss" and info.paper and info.summary
    m = create(name, 2)
    assert m.kind == "loss" and m.last_weights is None
    if name != "scaled":
        assert "https://" in info.paper and "https://" in (type(m).__doc__ or "")


# ---------------------------------------------------------------------------------- scaled
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_first_reference_golden(dtype):
    m = create("scaled", 3)
    first = np.array([2.0, 4.0, 0.5])
    second = np.array([1.0, 1.0, 1.0])
    assert float(m.combine(torch.tensor(first, dtype=dtype))) == pytest.approx(3.0)
    L = torch.tensor(second, dtype=dtype, requires_grad=True)
    total = m.combine(L)
    assert total.dtype == dtype
    close(total, (second / first).sum(), dtype)
    close(m.last_weights, 1 / first, dtype)
    total.backward()
    close(L.grad, 1 / first, dtype)  # the reference is detached


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_running_mean_golden(dtype):
    rng = np.random.default_rng(0)
    seq = rng.uniform(0.1, 10.0, size=(6, 3))
    mom = 0.7
    m = create("scaled", 3, reference="running", momentum=mom)
    ref = None
    for L in seq:
        ref = L.copy() if ref is None else mom * ref + (1 - mom) * L
        total = m.combine(torch.tensor(L, dtype=dtype))
        close(m.last_weights, 1 / ref, dtype)
        close(total, (L / ref).sum(), dtype)


def test_scaled_zero_reference_is_guarded():
    m = create("scaled", 2, eps=1e-6)
    m.combine(torch.tensor([0.0, 1.0]))
    total = m.combine(torch.tensor([2.0, 1.0]))
    assert float(total) == pytest.approx(2.0 / 1e-6 + 1.0)
    assert torch.isfinite(m.last_weights).all()


# ---------------------------------------------------------------------------------- uw
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls_option", [[1], [False, True, False], torch.tensor([1])])
def test_uw_log_variance_golden_values_and_gradients(dtype, cls_option):
    s_np = np.array([0.3, -0.5, 1.2])
    L_np = np.array([2.0, 0.7, 5.0])
    c = np.array([0.5, 1.0, 0.5])  # task 1 is a classification task
    m = create("uw", 3, classification_tasks=cls_option).to(dtype)
    with torch.no_grad():
        m.log_vars.copy_(torch.tensor(s_np))
    L = torch.tensor(L_np, dtype=dtype, requires_grad=True)
    total = m.combine(L)
    close(total, (c * np.exp(-s_np) * L_np + 0.5 * s_np).sum(), dtype)
    close(m.last_weights, c * np.exp(-s_np), dtype)
    total.backward()
    # by hand: d/ds_t = -c_t e^{-s_t} L_t + 1/2 ;  d/dL_t = c_t e^{-s_t}
    close(m.log_vars.grad, -c * np.exp(-s_np) * L_np + 0.5, dtype)
    close(L.grad, c * np.exp(-s_np), dtype)


def test_uw_float32_parameters_with_float64_losses():
    m = create("uw", 2)  # parameters stay float32
    L = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    total = m.combine(L)
    assert total.dtype == torch.float64
    total.backward()
    assert m.log_vars.grad is not None and m.log_vars.grad.dtype == torch.float32
    close(m.log_vars.grad, [-0.5 * 1 + 0.5, -0.5 * 3 + 0.5], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["sigma", "sigma_product"])
def test_uw_sigma_forms_golden_values_and_gradients(dtype, form):
    eps = 1e-3
    sig = np.array([0.5, 1.5, 2.0])
    L_np = np.array([2.0, 0.7, 5.0])
    m = create("uw", 3, form=form, eps=eps).to(dtype)
    with torch.no_grad():
        m.sigmas.copy_(torch.tensor(sig))
    L = torch.tensor(L_np, dtype=dtype, requires_grad=True)
    total = m.combine(L)
    data = L_np / (sig**2 + eps)
    if form == "sigma":
        expected = data.sum() + np.log(sig + eps).sum()
        reg_grad = 1 / (sig + eps)
    else:
        prod = sig.prod()
        expected = data.sum() + np.log(prod + eps)
        reg_grad = np.array([prod / s for s in sig]) / (prod + eps)
    close(total, expected, dtype)
    close(m.last_weights, 1 / (sig**2 + eps), dtype)
    total.backward()
    close(m.sigmas.grad, -2 * sig * L_np / (sig**2 + eps) ** 2 + reg_grad, dtype)


def test_uw_sigma_product_over_present_tasks_only():
    m = create("uw", 3, form="sigma_product", eps=1e-8)
    with torch.no_grad():
        m.sigmas.copy_(torch.tensor([0.5, 3.0, 2.0]))
    present = torch.tensor([True, False, True])
    total = m.combine(torch.tensor([1.0, 0.0, 4.0]), present)
    expected = 1 / 0.25 + 4 / 4 + math.log(0.5 * 2.0 + 1e-8)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert m.sigmas.grad[1] == 0


# ---------------------------------------------------------------------------------- gradnorm
def gradnorm_reference(w, L0, L, n, alpha, present=None):
    """numpy: renormalised weights and sign(G - target) * n over the present tasks."""
    T = len(w)
    p = np.ones(T, bool) if present is None else np.asarray(present)
    w = np.maximum(w, 1e-4)
    w = w * T / w.sum()
    G = w * n
    Lt = L[p] / L0[p]
    r = Lt / Lt.mean()
    target = np.zeros(T)
    target[p] = G[p].mean() * r**alpha
    grad = np.where(p, np.sign(G - target) * n, 0.0)
    return w, grad, target


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradnorm_weight_gradient_golden(dtype):
    alpha = 1.5
    w0 = np.array([0.5, 1.0, 2.0])
    L0 = np.array([2.0, 1.0, 4.0])
    L1 = np.array([1.0, 0.9, 1.0])
    n1 = np.array([3.0, 0.5, 1.2])
    m = create("gradnorm", 3, alpha=alpha).to(dtype)
    m.combine(torch.tensor(L0, dtype=dtype))  # records L(0); no norms -> no gradient
    assert m.weights.grad is None
    with torch.no_grad():
        m.weights.copy_(torch.tensor(w0))
    m.observe_grad_norms(torch.tensor(n1, dtype=dtype))
    L = torch.tensor(L1, dtype=dtype, requires_grad=True)
    total = m.combine(L)
    w_ref, grad_ref, target = gradnorm_reference(w0, L0, L1, n1, alpha)
    close(m.weights.detach(), w_ref, dtype)
    close(m.last_weights, w_ref, dtype)
    close(total, (w_ref * L1).sum(), dtype)
    close(m.weights.grad, grad_ref, dtype)
    assert np.all(grad_ref != 0)
    total.backward()
    close(L.grad, w_ref, dtype)  # the network sees detached weights

    # autograd on the explicit GradNorm loss with the target held constant
    w = torch.tensor(w_ref, dtype=dtype, requires_grad=True)
    n = torch.tensor(n1, dtype=dtype)
    G = w * n
    ratios = torch.tensor(L1 / L0, dtype=dtype)
    tgt = (G.mean() * (ratios / ratios.mean()) ** alpha).detach()
    close(tgt, target, dtype)
    (G - tgt).abs().sum().backward()
    close(m.weights.grad, w.grad, dtype)


def test_gradnorm_accumulates_into_existing_grad_and_first_step_target_is_mean():
    m = create("gradnorm", 2)
    m.weights.grad = torch.ones(2)
    m.observe_grad_norms(torch.tensor([1.0, 3.0]))
    m.combine(torch.tensor([5.0, 0.1]))
    # first step: r = 1, target = mean(G) = 2 -> sign(G - 2) * n = [-1, +3]
    close(m.weights.grad, [1.0 - 1.0, 1.0 + 3.0], torch.float32)


def test_gradnorm_renormalises_after_each_update_with_positive_floor():
    m = create("gradnorm", 3)
    with torch.no_grad():
        m.weights.copy_(torch.tensor([-1.0, 3.0, 1.0]))
    m.combine(torch.tensor([1.0, 1.0, 1.0]))
    w = m.weights.detach()
    assert float(w.sum()) == pytest.approx(3.0)
    assert bool((w > 0).all())
    close(w, np.array([1e-4, 3.0, 1.0]) * 3 / 4.0001, torch.float32)


def test_gradnorm_absent_task_gets_no_gradient_or_initial_loss():
    alpha = 1.5
    m = create("gradnorm", 3, alpha=alpha)
    present = torch.tensor([True, False, True])
    m.observe_grad_norms(torch.tensor([2.0, 0.0, 1.0]))
    m.combine(torch.tensor([4.0, 0.0, 2.0]), present)
    assert not bool(m.has_initial[1]) and m.initial_losses[1] == 0
    m.weights.grad = None
    n = np.array([2.0, 0.0, 0.5])
    m.observe_grad_norms(torch.tensor(n, dtype=torch.float32))
    m.combine(torch.tensor([1.0, 0.0, 1.5]), present)
    _, grad_ref, _ = gradnorm_reference(
        np.ones(3),
        np.array([4.0, 1.0, 2.0]),
        np.array([1.0, 0.0, 1.5]),
        n,
        alpha,
        present=[True, False, True],
    )
    close(m.weights.grad, grad_ref, torch.float32)
    assert m.weights.grad[1] == 0 and m.last_weights[1] == 0
    # the first step task 1 is present records its L(0)
    m.combine(torch.tensor([1.0, 7.0, 1.5]), None)
    assert float(m.initial_losses[1]) == 7.0


def test_gradnorm_observe_validates_shape():
    m = create("gradnorm", 3)
    with pytest.raises(ValueError, match="gradient norm"):
        m.observe_grad_norms(torch.ones(2))


# ---------------------------------------------------------------------------------- dwa
@pytest.mark.parametrize("dtype", DTYPES)
def test_dwa_golden_weights_from_epoch_means(dtype):
    T, tau = 3, 2.0
    epochs = np.array([[3.0, 1.0, 0.5], [2.0, 0.9, 0.6], [1.0, 0.85, 0.3], [0.9, 0.8, 0.31]])
    m = create("dwa", T)
    L = np.array([1.0, 2.0, 3.0])
    for k in range(len(epochs) + 1):
        total = m.combine(torch.tensor(L, dtype=dtype))
        if k < 2:
            expected = np.ones(T)
        else:
            expected = T * np_softmax(epochs[k - 1] / epochs[k - 2] / tau)
        close(m.last_weights, expected, dtype)
        close(total, (expected * L).sum(), dtype)
        if k < len(epochs):
            m.epoch_end(torch.tensor(epochs[k], dtype=dtype))


def test_dwa_temperature_and_absent_epoch():
    m = create("dwa", 2, temperature=0.5)
    m.epoch_end(torch.tensor([1.0, 1.0]))
    m.epoch_end(torch.tensor([0.5, 1.0]))
    m.combine(torch.tensor([1.0, 1.0]))
    close(m.last_weights, 2 * np_softmax(np.array([0.5, 1.0]) / 0.5), torch.float32)
    # task 1 has no labels this epoch: NaN (or present=False) leaves its history alone
    hist = m.history.clone()
    m.epoch_end(torch.tensor([0.25, float("nan")]))
    assert m.history[0, 1] == hist[0, 1] and m.history[1, 1] == hist[1, 1]
    m.epoch_end(torch.tensor([0.125, 0.0]), present=torch.tensor([True, False]))
    assert m.history[1, 1] == hist[1, 1] and int(m.epochs_seen[1]) == 2
    m.combine(torch.tensor([1.0, 1.0]))
    close(m.last_weights, 2 * np_softmax(np.array([0.5, 1.0]) / 0.5), torch.float32)


def test_dwa_present_tasks_share_the_softmax():
    m = create("dwa", 3)
    m.epoch_end(torch.tensor([1.0, 1.0, 1.0]))
    m.epoch_end(torch.tensor([0.5, 1.0, 2.0]))
    m.combine(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([True, False, True]))
    expected = np.array([1.0, 0.0, 1.0]) * 2 * np.exp(np.array([0.25, 0.0, 1.0]))
    expected[[0, 2]] /= np.exp([0.25, 1.0]).sum()
    close(m.last_weights, expected, torch.float32)


def test_dwa_epoch_end_validates():
    m = create("dwa", 2)
    with pytest.raises(ValueError, match="2 epoch-mean"):
        m.epoch_end(torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        m.epoch_end(torch.tensor([1.0, float("inf")]))


# ---------------------------------------------------------------------------------- rlw
@pytest.mark.parametrize("dtype", DTYPES)
def test_rlw_golden_softmax_of_seeded_normal(dtype):
    T = 4
    g = torch.Generator().manual_seed(123)
    zs = [torch.randn(T, generator=g, dtype=torch.float64).numpy() for _ in range(3)]
    m = create("rlw", T, seed=123)
    L = np.array([1.0, 2.0, 3.0, 4.0])
    for z in zs:
        total = m.combine(torch.tensor(L, dtype=dtype))
        close(m.last_weights, np_softmax(z), dtype)
        close(total, (np_softmax(z) * L).sum(), dtype)
    m2 = create("rlw", T, seed=123, scale="num_tasks")
    m2.combine(torch.tensor(L, dtype=dtype))
    close(m2.last_weights, T * np_softmax(zs[0]), dtype)


def test_rlw_present_tasks_renormalised():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, generator=g, dtype=torch.float64).numpy()
    m = create("rlw", 3, seed=5)
    m.combine(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([True, False, True]))
    expected = np.zeros(3)
    expected[[0, 2]] = np_softmax(z[[0, 2]])
    close(m.last_weights, expected, torch.float32)


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_seeds_repeat_exactly(distribution):
    def run(seed, n=5):
        m = create("rlw", 3, seed=seed, distribution=distribution)
        out = []
        for _ in range(n):
            m.combine(torch.ones(3, dtype=torch.float64))
            out.append(m.last_weights.clone())
        return torch.stack(out)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.allclose(a.sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(run(torch.Generator().manual_seed(7)), a)  # a generator passes through
    # float32 draws are the float64 draws rounded
    m = create("rlw", 3, seed=7, distribution=distribution)
    m.combine(torch.ones(3))
    assert torch.allclose(m.last_weights.double(), a[0], rtol=1e-6)


@pytest.mark.parametrize("concentration", [0.3, 1.0, 4.0])
def test_rlw_dirichlet_moments(concentration):
    T, n = 3, 3000
    m = create("rlw", T, seed=0, distribution="dirichlet", concentration=concentration)
    draws = []
    for _ in range(n):
        m.combine(torch.ones(T, dtype=torch.float64))
        draws.append(m.last_weights)
    W = torch.stack(draws).numpy()
    assert np.all(W >= 0) and np.allclose(W.sum(1), 1)
    var = (1 / T) * (1 - 1 / T) / (T * concentration + 1)  # Dirichlet(a·1) marginal variance
    np.testing.assert_allclose(W.mean(0), 1 / T, atol=4 * math.sqrt(var / n))
    np.testing.assert_allclose(W.var(0), var, rtol=0.12)


@pytest.mark.parametrize("shape", [0.2, 1.0, 2.5])
def test_gamma_sampler_moments(shape):
    x = sample_log_gamma(shape, 40000, torch.Generator().manual_seed(1)).exp().numpy()
    assert x.mean() == pytest.approx(shape, rel=0.03)
    assert x.var() == pytest.approx(shape, rel=0.08)


def test_rlw_generator_state_travels_in_state_dict_and_reset_rewinds():
    m = create("rlw", 3, seed=3)
    for _ in range(2):
        m.combine(torch.ones(3))
    first = m.last_weights.clone()
    state = m.state_dict()
    m.combine(torch.ones(3))
    nxt = m.last_weights.clone()
    m2 = create("rlw", 3, seed=99)
    m2.load_state_dict(state)
    m2.combine(torch.ones(3))
    assert torch.equal(m2.last_weights, nxt)
    m.reset()
    m.combine(torch.ones(3))
    m.combine(torch.ones(3))
    assert torch.equal(m.last_weights, first)


# ---------------------------------------------------------------------------------- imtl_l
@pytest.mark.parametrize("dtype", DTYPES)
def test_imtl_l_golden_values_and_gradients(dtype):
    s_np = np.array([0.2, -0.3, 1.0])
    L_np = np.array([1.5, 4.0, 0.2])
    m = create("imtl_l", 3).to(dtype)
    with torch.no_grad():
        m.log_scales.copy_(torch.tensor(s_np))
    L = torch.tensor(L_np, dtype=dtype, requires_grad=True)
    total = m.combine(L)
    close(total, (np.exp(s_np) * L_np - s_np).sum(), dtype)
    close(m.last_weights, np.exp(s_np), dtype)
    total.backward()
    close(m.log_scales.grad, np.exp(s_np) * L_np - 1, dtype)
    close(L.grad, np.exp(s_np), dtype)
    close(
        imtl_l_transform(torch.tensor(L_np, dtype=dtype), torch.tensor(s_np)),
        np.exp(s_np) * L_np - s_np,
        dtype,
    )


def test_imtl_l_transform_is_differentiable_in_both_arguments():
    L = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.0, 1.0], requires_grad=True)
    out = imtl_l_transform(L, s)
    assert out.dtype == torch.float64
    out.sum().backward()
    close(s.grad, [2.0 - 1, math.e * 3 - 1], torch.float32)
    close(L.grad, [1.0, math.e], torch.float64)


# ---------------------------------------------------------------------------------- properties
def drive(name, T, loss_seq, perm=None, dtype=torch.float64, present=None, seed=0):
    """Run a method over a loss sequence (tasks optionally permuted); returns the method and the
    per-step weights (and GradNorm's weight gradients)."""
    rng = np.random.default_rng(seed)
    p = np.arange(T) if perm is None else np.asarray(perm)
    m = create(name, T).to(dtype)
    param = learnable(m)
    if param is not None and name != "gradnorm":
        with torch.no_grad():
            param.copy_(torch.tensor(rng.uniform(0.5, 1.5, T)[p]))
    weights, grads = [], []
    for k, L in enumerate(loss_seq):
        L = np.asarray(L)[p]
        if name == "dwa" and k > 0:
            m.epoch_end(torch.tensor(np.asarray(loss_seq[k - 1])[p] * 1.1, dtype=dtype))
        if name == "gradnorm":
            m.weights.grad = None
            m.observe_grad_norms(
                torch.tensor(np.sqrt(np.asarray(loss_seq[k]))[p] + 0.1 * k, dtype=dtype)
            )
        m.combine(torch.tensor(L, dtype=dtype))
        weights.append(m.last_weights.clone())
        if name == "gradnorm":
            grads.append(m.weights.grad.clone())
            with torch.no_grad():  # an optimizer step, before the next renormalisation
                m.weights.sub_(0.05 * m.weights.grad)
    return m, weights, grads


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permuting_tasks_permutes_weights(name):
    T = 4
    rng = np.random.default_rng(1)
    seq = rng.uniform(0.1, 5.0, size=(5, T))
    perm = np.array([2, 0, 3, 1])
    _, w, g = drive(name, T, seq)
    _, wp, gp = drive(name, T, seq, perm=perm)
    for a, b in zip(w, wp, strict=True):
        torch.testing.assert_close(a[perm], b)
    for a, b in zip(g, gp, strict=True):
        torch.testing.assert_close(a[perm], b)
    assert not torch.allclose(w[-1], w[-1][0].expand(T))  # a non-trivial case


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", METHODS)
def test_extreme_loss_scales_stay_finite(name, dtype):
    T = 3
    scales = np.array([1e-15, 1.0, 1e15])
    seq = [scales * f for f in (1.0, 0.5, 2.0, 0.1, 1.0)]
    m = create(name, T).to(dtype)
    for k, L_np in enumerate(seq):
        if name == "dwa" and k > 0:
            m.epoch_end(torch.tensor(seq[k - 1][::-1].copy(), dtype=dtype))
        if name == "gradnorm":
            m.observe_grad_norms(torch.tensor(np.sqrt(L_np), dtype=dtype))
        L = torch.tensor(L_np, dtype=dtype, requires_grad=True)
        total = m.combine(L)
        total.backward()
        assert torch.isfinite(total), (name, k)
        assert torch.isfinite(m.last_weights).all(), (name, k, m.last_weights)
        assert L.grad is not None and torch.isfinite(L.grad).all()
        for prm in m.parameters():
            assert torch.isfinite(prm.grad).all()
            prm.grad = None


@pytest.mark.parametrize("name", METHODS)
def test_absent_tasks_get_zero_weight_and_no_state_update(name):
    T = 3
    present = torch.tensor([True, False, True])
    m = create(name, T)
    if name == "dwa":
        m.epoch_end(torch.tensor([1.0, 2.0, 3.0]))
        m.epoch_end(torch.tensor([0.5, 1.0, 2.0]))
    m.combine(torch.tensor([1.0, 2.0, 3.0]))  # a step with every task
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    if name == "gradnorm":
        m.observe_grad_norms(torch.tensor([1.0, 0.0, 2.0]))
    for prm in m.parameters():
        prm.grad = None
    L = torch.tensor([0.5, 0.0, 4.0], requires_grad=True)
    total = m.combine(L, present)
    total.backward()
    assert m.last_weights[1] == 0
    assert m.last_weights[0] > 0 and m.last_weights[2] > 0
    for k, v in m.state_dict().items():
        if isinstance(v, torch.Tensor) and v.shape[-1:] == (T,) and k in before:
            assert torch.equal(v[..., 1], before[k][..., 1]), k
    for prm in m.parameters():
        assert prm.grad is not None and prm.grad[1] == 0
    # through the Balancer (a None loss) as well
    bal = taskbalance.Balancer(create(name, T), [nn.Parameter(torch.ones(2, 2))])
    shared = bal.shared[0]
    losses = {"a": shared.sum(), "b": None, "c": (shared**2).sum()}
    info = bal.backward(losses)
    assert info.weights is not None and info.weights[1] == 0 and info.weights[0] > 0


@pytest.mark.parametrize("name", ["scaled", "gradnorm", "dwa"])
def test_state_starts_when_a_task_first_appears(name):
    m = create(name, 2)
    present = torch.tensor([True, False])
    m.combine(torch.tensor([2.0, 0.0]), present)
    m.combine(torch.tensor([2.0, 5.0]), None)
    if name == "scaled":
        close(m.reference_losses, [2.0, 5.0], torch.float32)
    elif name == "gradnorm":
        close(m.initial_losses, [2.0, 5.0], torch.float32)
    else:
        m.epoch_end(torch.tensor([1.0, float("nan")]))
        assert m.epochs_seen.tolist() == [1, 0]


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_and_reset(name):
    T = 3
    rng = np.random.default_rng(2)
    seq = rng.uniform(0.5, 2.0, size=(6, T))

    def step(m, k):
        if name == "dwa":
            m.epoch_end(torch.tensor(seq[k] * 2))
        if name == "gradnorm":
            m.observe_grad_norms(torch.tensor(seq[k] + 1.0))
        m.combine(torch.tensor(seq[k]))
        if learnable(m) is not None:
            with torch.no_grad():
                prm = learnable(m)
                prm.sub_(0.1 * (prm.grad if prm.grad is not None else torch.ones(T)))
                prm.grad = None
        return m.last_weights.clone()

    fresh = [step(create(name, T), 0)]
    m = create(name, T)
    for k in range(3):
        step(m, k)
    m2 = create(name, T)
    m2.load_state_dict(m.state_dict())
    for k in range(3, 6):
        torch.testing.assert_close(step(m, k), step(m2, k))
    m.reset()
    assert m.last_weights is None
    torch.testing.assert_close(step(m, 0), fresh[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", METHODS)
def test_outputs_follow_losses_dtype_and_device(name, device):
    for dtype in DTYPES:
        m = create(name, 2)
        if name == "gradnorm":
            m.observe_grad_norms(torch.ones(2, dtype=dtype, device=device))
        total = m.combine(torch.tensor([1.0, 2.0], dtype=dtype, device=device))
        assert total.dtype == dtype and total.device.type == device
        assert m.last_weights.dtype == dtype and m.last_weights.device.type == device
        assert not m.last_weights.requires_grad


# ---------------------------------------------------------------------------------- options
BAD_OPTIONS = [
    ("scaled", {"reference": "last"}, "reference"),
    ("scaled", {"momentum": 1.0}, "momentum"),
    ("scaled", {"momentum": -0.1}, "momentum"),
    ("scaled", {"eps": 0.0}, "eps"),
    ("uw", {"form": "sigma2"}, "form"),
    ("uw", {"classification_tasks": [3]}, "classification_tasks"),
    ("uw", {"classification_tasks": [True, False]}, "classification_tasks"),
    ("uw", {"classification_tasks": ["a"]}, "classification_tasks"),
    ("uw", {"form": "sigma", "classification_tasks": [0]}, "classification_tasks"),
    ("uw", {"eps": -1.0}, "eps"),
    ("gradnorm", {"alpha": -1.0}, "alpha"),
    ("gradnorm", {"alpha": float("nan")}, "alpha"),
    ("dwa", {"temperature": 0.0}, "temperature"),
    ("dwa", {"temperature": "2"}, "temperature"),
    ("rlw", {"distribution": "uniform"}, "distribution"),
    ("rlw", {"concentration": 0.0}, "concentration"),
    ("rlw", {"scale": "two"}, "scale"),
    ("rlw", {"seed": "abc"}, "seed"),
    ("rlw", {"seed": 1.5}, "seed"),
    ("imtl_l", {"lr": 0.1}, "lr"),
    ("gradnorm", {"lr_scale": 1.0}, "lr_scale"),
    ("uw", {"init": 0.0}, "init"),
]


@pytest.mark.parametrize(("name", "options", "word"), BAD_OPTIONS)
def test_bad_options_raise_value_error_naming_the_option(name, options, word):
    with pytest.raises(ValueError, match=word):
        taskbalance.create(name, 3, **options)


# ---------------------------------------------------------------------------------- training
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])

    def forward(self, x):
        z = self.shared(x)
        return [h(z).squeeze(-1) for h in self.heads]


@pytest.mark.parametrize("name", METHODS)
def test_trains_a_two_head_network(name):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    targets = [x @ torch.tensor([1.0, -2.0, 0.5, 0.0]), 10.0 * torch.sin(x[:, 0] + x[:, 3])]
    model = TwoHeads()
    method = create(name, 2)
    balancer = taskbalance.Balancer(method, model.shared.parameters(), task_names=["a", "b"])
    opt = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=1e-2)

    def losses():
        preds = model(x)
        return [nn.functional.mse_loss(p, t) for p, t in zip(preds, targets, strict=True)]

    with torch.no_grad():
        start = torch.stack(losses())
    epoch = []
    for step in range(100):
        opt.zero_grad()
        L = losses()
        info = balancer.backward(dict(zip(["a", "b"], L, strict=True)))
        assert info.weights is not None and torch.isfinite(info.weights).all()
        opt.step()
        epoch.append(torch.stack(L).detach())
        if name == "dwa" and step % 10 == 9:
            method.epoch_end(torch.stack(epoch).mean(0))
            epoch = []
    with torch.no_grad():
        end = torch.stack(losses())
    assert bool((end < 0.5 * start).all()), (start, end)
    if name == "gradnorm":
        assert info.weights is not None
        # renormalised at the start of each step: the weights of every step sum to T
        assert float(info.weights.sum()) == pytest.approx(2.0, rel=1e-5)
        assert not torch.allclose(info.weights, torch.ones(2))
