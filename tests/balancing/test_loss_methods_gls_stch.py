"""GLS and STCH: golden values from numpy re-implementations of the papers' formulas (and of
LibMTL's code, median-research-group/LibMTL: LibMTL/weighting/GLS.py at 2d842d6,
LibMTL/weighting/STCH.py at ea8b8b7, read for the definitions; re-written here), gradients
against autograd, state that resumes exactly, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import taskbalance as tb

DTYPES = [torch.float32, torch.float64]


def grad_of(method, losses: np.ndarray, dtype=torch.float64):
    L = torch.tensor(losses, dtype=dtype, requires_grad=True)
    total = method.combine(L)
    total.backward()
    assert L.grad is not None and method.last_weights is not None
    return float(total.detach()), L.grad.double().numpy(), method.last_weights.double().numpy()


# --------------------------------------------------------------------------- GLS
@pytest.mark.parametrize("dtype", DTYPES)
def test_gls_value_and_gradient_match_the_geometric_mean(dtype):
    rng = np.random.default_rng(0)
    for T in (2, 3, 5):
        L = rng.uniform(0.01, 50.0, T)
        total, grad, w = grad_of(tb.create("gls", T), L, dtype)
        ref = np.prod(L) ** (1.0 / T)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert total == pytest.approx(ref, rel=tol)
        # ∂/∂L_t (Π L)^{1/T} = (Π L)^{1/T} / (T L_t), the paper's effective weights
        np.testing.assert_allclose(grad, ref / (T * L), rtol=tol * 10)
        np.testing.assert_allclose(w, grad, rtol=tol * 10)


def test_gls_extreme_losses_and_many_tasks_stay_finite():
    L = np.array([1e-30, 1e30, 1e-20, 1e25, 3.0] * 4)  # the product under/overflows float64
    total, grad, _ = grad_of(tb.create("gls", len(L)), L)
    assert np.isfinite(total) and np.isfinite(grad).all()
    assert total == pytest.approx(np.exp(np.log(L).mean()), rel=1e-12)


def test_gls_absent_task_eps_and_bad_losses():
    m = tb.create("gls", 3)
    assert isinstance(m, tb.LossMethod)
    L = torch.tensor([2.0, 0.0, 8.0], requires_grad=True)
    total = m.combine(L, torch.tensor([True, False, True]))
    total.backward()
    assert float(total.detach()) == pytest.approx(4.0)  # geometric mean of the present tasks
    assert L.grad is not None
    assert torch.isfinite(L.grad).all() and float(L.grad[1]) == 0.0
    assert m.last_weights is not None
    assert float(m.last_weights[1]) == 0.0
    with pytest.raises(ValueError, match="task 1.*positive.*eps"):
        m.combine(torch.tensor([2.0, 0.0, 8.0]))
    with pytest.raises(ValueError, match="task 0"):
        m.combine(torch.tensor([-1.0, 1.0, 1.0]))
    total, grad, _ = grad_of(tb.create("gls", 2, eps=1e-3), np.array([0.0, 4.0]))
    assert total == pytest.approx(np.sqrt(1e-3 * 4.001)) and np.isfinite(grad).all()
    with pytest.raises(ValueError, match="eps"):
        tb.create("gls", 2, eps=-1.0)


# --------------------------------------------------------------------------- STCH
def stch_reference(epochs, mu, warmup, T):
    """LibMTL's STCH (commit ea8b8b7), re-written in numpy: per step the total and its gradient
    w.r.t. the losses. ``epochs`` is a list of epochs, each a list of loss vectors."""
    nadir = None
    acc, count = np.zeros(T), 0
    out = []
    for e, steps in enumerate(epochs):
        if e > warmup and nadir is None:
            nadir = acc / count
        for L in steps:
            if e <= warmup:
                total = np.log(L + 1e-20).sum()
                grad = 1.0 / (L + 1e-20)
                if e == warmup:
                    acc, count = acc + L, count + 1
            else:
                assert nadir is not None  # set at the end of the warm-up
                f = np.log(L / nadir + 1e-20)
                z = f / mu
                soft = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                total = mu * (np.log(np.exp(z - z.max()).sum()) + z.max()) * T
                grad = T * soft / (L + 1e-20 * nadir)
            out.append((total, grad))
    return out


@pytest.mark.parametrize("mu,warmup", [(1.0, 1), (0.1, 0), (3.0, 2)])
def test_stch_matches_the_authors_recipe_over_epochs(mu, warmup):
    rng = np.random.default_rng(1)
    T = 3
    epochs = [[rng.uniform(0.05, 5.0, T) for _ in range(4)] for _ in range(warmup + 3)]
    ref = stch_reference(epochs, mu, warmup, T)
    m = tb.create("stch", T, mu=mu, warmup_epochs=warmup)
    k = 0
    for steps in epochs:
        for L in steps:
            total, grad, w = grad_of(m, L)
            assert total == pytest.approx(ref[k][0], rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(grad, ref[k][1], rtol=1e-10)
            np.testing.assert_allclose(w, grad, rtol=1e-10)
            k += 1
        m.epoch_end(torch.tensor(np.mean(steps, axis=0)))
    assert m.nadir is not None


def test_stch_is_a_smooth_max_and_resumes_from_state_dict():
    # μ → 0: the gradient goes to the task with the largest normalised log-loss.
    m = tb.create("stch", 2, mu=1e-3, warmup_epochs=0)
    assert isinstance(m, tb.LossMethod)
    m.combine(torch.tensor([1.0, 1.0]))
    m.epoch_end(torch.tensor([1.0, 1.0]))
    _, grad, _ = grad_of(m, np.array([2.0, 1.5]))
    np.testing.assert_allclose(grad, [2 / 2.0, 0.0], atol=1e-12)
    # resume mid-collection and after the nadir is fixed
    rng = np.random.default_rng(2)
    seq = [rng.uniform(0.1, 3.0, 2) for _ in range(12)]
    a = tb.create("stch", 2, warmup_epochs=1)
    b = None
    outs_a, outs_b = [], []
    for i, L in enumerate(seq):
        if i == 5:
            b = tb.create("stch", 2, warmup_epochs=1)
            b.load_state_dict(a.state_dict())
        outs_a.append(grad_of(a, L)[0])
        if b is not None:
            outs_b.append(grad_of(b, L)[0])
        if i % 3 == 2:
            a.epoch_end(torch.tensor(L))
            if b is not None:
                b.epoch_end(torch.tensor(L))
    assert outs_b == outs_a[5:]
    a.reset()
    assert a.nadir is None and a.epochs_done == 0


def test_stch_absent_tasks_and_bad_input():
    m = tb.create("stch", 3, warmup_epochs=0)
    assert isinstance(m, tb.LossMethod)
    present = torch.tensor([True, False, True])
    m.combine(torch.tensor([1.0, 0.0, 2.0]), present)
    m.epoch_end(torch.tensor([1.0, float("nan"), 2.0]))
    assert m.nadir is None  # task 1 had no loss in the nadir epoch: it keeps collecting
    m.combine(torch.tensor([1.0, 4.0, 2.0]), None)
    m.epoch_end(torch.tensor([1.0, 4.0, 2.0]))
    np.testing.assert_allclose(m.nadir.numpy(), [1.0, 4.0, 2.0])
    L = torch.tensor([0.5, 0.0, 3.0], requires_grad=True)
    total = m.combine(L, present)
    total.backward()
    assert torch.isfinite(L.grad).all() and float(L.grad[1]) == 0.0
    f = np.log(np.array([0.5, 3.0]) / np.array([1.0, 2.0]) + 1e-20)
    assert float(total.detach()) == pytest.approx(2 * np.log(np.exp(f).sum()))
    with pytest.raises(ValueError, match="task 2.*non-negative"):
        m.combine(torch.tensor([1.0, 1.0, -0.5]))
    for bad, needle in [
        ({"mu": 0.0}, "mu"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 1.5}, "warmup_epochs"),
        ({"pref_weights": [1.0, 0.0]}, "pref_weights"),
    ]:
        with pytest.raises(ValueError, match=needle):
            tb.create("stch", 2, **bad)


def test_stch_preference_weights():
    m = tb.create("stch", 2, warmup_epochs=0, pref_weights=[2.0, 1.0], mu=0.5)
    assert isinstance(m, tb.LossMethod)
    m.combine(torch.tensor([1.0, 1.0]))
    m.epoch_end(torch.tensor([1.0, 1.0]))
    total, grad, _ = grad_of(m, np.array([1.5, 3.0]))
    z = np.array([2.0, 1.0]) * np.log(np.array([1.5, 3.0]) + 1e-20) / 0.5
    assert total == pytest.approx(2 * 0.5 * np.log(np.exp(z).sum()))
    soft = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(grad, 2 * np.array([2.0, 1.0]) * soft / np.array([1.5, 3.0]))


# --------------------------------------------------------------------------- shared properties
NEW_LOSS_METHODS = ["gls", "stch"]


def drive_epochs(m, seq, dtype, per_epoch=2):
    """Combine each loss vector of ``seq``; an epoch ends every ``per_epoch`` steps (STCH with
    ``warmup_epochs=0`` then reaches its smooth-max phase)."""
    for k, L_np in enumerate(seq):
        L = torch.tensor(L_np, dtype=dtype, requires_grad=True)
        total = m.combine(L)
        total.backward()
        yield total, L.grad
        if k % per_epoch == per_epoch - 1:
            m.epoch_end(L.detach())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NEW_LOSS_METHODS)
def test_extreme_loss_scales_stay_finite(name, dtype):
    scales = np.array([1e-15, 1.0, 1e15])
    seq = [scales * f for f in (1.0, 0.5, 2.0, 0.1, 1.0, 3.0)]
    options = {"warmup_epochs": 0} if name == "stch" else {}
    m = tb.create(name, 3, **options).to(dtype)
    for total, grad in drive_epochs(m, seq, dtype):
        assert torch.isfinite(total) and torch.isfinite(grad).all()
        assert m.last_weights is not None
        assert torch.isfinite(m.last_weights).all()
    if name == "stch":
        assert m.nadir is not None


@pytest.mark.parametrize("name", NEW_LOSS_METHODS)
def test_outputs_follow_losses_dtype_and_permutation(name):
    for dtype in DTYPES:
        m = tb.create(name, 2)
        assert isinstance(m, tb.LossMethod)
        total = m.combine(torch.tensor([1.0, 2.0], dtype=dtype))
        assert m.last_weights is not None
        assert total.dtype == dtype and m.last_weights.dtype == dtype
        assert not m.last_weights.requires_grad
    rng = np.random.default_rng(3)
    seq = [rng.uniform(0.1, 4.0, 4) for _ in range(6)]
    perm = [2, 0, 3, 1]
    opts = {"warmup_epochs": 1} if name == "stch" else {}
    a = [g for _, g in drive_epochs(tb.create(name, 4, **opts), seq, torch.float64)]
    b = [
        g
        for _, g in drive_epochs(tb.create(name, 4, **opts), [s[perm] for s in seq], torch.float64)
    ]
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga[perm], gb)


@pytest.mark.parametrize("name", NEW_LOSS_METHODS)
def test_trains_a_two_head_network_through_the_balancer(name):
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    targets = [x @ torch.tensor([1.0, -2.0, 0.5, 0.0]), 10.0 * torch.sin(x[:, 0] + x[:, 3])]
    shared = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
    method = tb.create(name, 2, **({"warmup_epochs": 0} if name == "stch" else {}))
    balancer = tb.Balancer(method, shared.parameters(), task_names=["a", "b"])
    opt = torch.optim.Adam([*shared.parameters(), *heads.parameters()], lr=1e-2)

    def losses():
        z = shared(x)
        return [nn.functional.mse_loss(h(z).squeeze(-1), t) for h, t in zip(heads, targets)]

    with torch.no_grad():
        start = torch.stack(losses())
    for step in range(100):
        opt.zero_grad()
        L = losses()
        info = balancer.backward(dict(zip(["a", "b"], L, strict=True)))
        assert info.weights is not None and torch.isfinite(info.weights).all()
        opt.step()
        if step % 10 == 9:
            method.epoch_end(torch.stack(L).detach())
    with torch.no_grad():
        end = torch.stack(losses())
    # every loss falls; the product (what both methods balance in log space) by 10x or more
    assert bool((end < start).all()), (start, end)
    assert float(end.prod()) < 0.1 * float(start.prod()), (start, end)


@pytest.mark.parametrize(("name", "bad"), [("gls", 0.0), ("stch", -0.5)])
def test_the_balancer_names_the_task_whose_loss_has_the_wrong_sign(name, bad):
    W = nn.Parameter(torch.ones(2))
    bal = tb.Balancer(tb.create(name, 2), [W], task_names=["seg", "depth"])
    with pytest.raises(ValueError, match=rf"'{name}'.*loss of task 'depth' is {bad}"):
        bal.backward({"seg": W.sum(), "depth": W.sum() * 0 + bad})
    # an absent task's placeholder is not checked; the present task is balanced
    bal.backward({"seg": W.sum(), "depth": None})
    assert W.grad is not None and torch.isfinite(W.grad).all()
    # check_finite=False skips the check (no sync): the user opted out
    tb.Balancer(tb.create(name, 2), [W], check_finite=False).backward([W.sum(), W.sum() * 0 + 1])
