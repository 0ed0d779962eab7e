"""Small solvers on the ``n x n`` Gramian ``G = J Jᵀ`` of the per-task gradients.

Everything here works on the Gramian (cheap for any number of parameters ``P``), in torch, on
the device of the gradients, and in ``float64`` whatever the dtype of ``J``: the systems are
tiny, and float64 keeps gradients of very different scales (``1e-15`` next to ``1e15``) exact.

* :func:`gramian` - ``G`` in float64, robust to the scale of the rows; :func:`normalized` -
  ``G`` divided by its largest diagonal entry (the methods here are scale-invariant);
  :func:`normalized_gramian` and :func:`unit_gramian` - both straight from ``J``;
* :func:`min_norm_weights` - the exact min-norm point of the convex hull of the rows (MGDA);
* :func:`combine` - ``d = wᵀ J`` back in ``J``'s dtype;
* :func:`random_orders` - reproducible random task orders (PCGrad, GradVac);
* :func:`solve_device` - where the float64 work runs (the gradients' device; CPU for MPS).

Nothing here copies ``J`` to the host; the only per-parameter work is ``J Jᵀ`` and ``wᵀ J``.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "combine",
    "gramian",
    "min_norm_weights",
    "normalized",
    "normalized_gramian",
    "random_orders",
    "solve_device",
    "unit_form",
    "unit_gramian",
    "first_nonfinite_row",
]

#: Largest ``n`` for which :func:`min_norm_weights` enumerates every support (``2^n - 1`` faces,
#: batched, no host synchronisation); larger problems use Wolfe's active-set method.
ENUMERATE_MAX = 8


def solve_device(device: torch.device) -> torch.device:
    """Where the float64 Gramian work runs: the gradients' device, except MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


#: Columns of ``J`` per chunk of :func:`gramian`: small on the CPU (a chunk stays in cache),
#: large on accelerators (few kernel launches).
CHUNK_COLUMNS_CPU = 1 << 14
CHUNK_COLUMNS_ACCELERATOR = 1 << 22
#: A float32 chunk product is trusted when every diagonal entry of the result lies in
#: ``[TINY_DIAGONAL, inf)``; below, squares of float32 entries may have lost digits (subnormal).
TINY_DIAGONAL = 1e-28


def _chunk_columns(device: torch.device) -> int:
    return CHUNK_COLUMNS_CPU if device.type == "cpu" else CHUNK_COLUMNS_ACCELERATOR


def _chunked_gramian(J: Tensor, exact: bool, scale: Tensor | None = None) -> Tensor:
    """``Σ_chunks J_c J_cᵀ`` accumulated in float64 on ``J``'s device, never copying all of J.

    ``exact=False``: each chunk product in float32 (fast; J's precision is float32 at best);
    ``exact=True``: chunks converted to float64 first. ``scale``: divide row t by ``scale[t]``
    chunk by chunk (rows too large or too small for float64 squares).
    """
    n, P = J.shape
    G = torch.zeros(n, n, dtype=torch.float64, device=J.device)
    step = _chunk_columns(J.device)
    work = torch.float64 if exact else torch.float32
    for start in range(0, P, step):
        Jc = J[:, start : start + step]
        if Jc.dtype != work:
            Jc = Jc.to(work)
        if scale is not None:
            Jc = Jc / scale.to(work)[:, None]
        if exact:
            G.addmm_(Jc, Jc.T)
        else:
            G += Jc @ Jc.T
    return G


def _needs_exact(G: Tensor) -> bool:
    diag = G.diagonal()
    return not bool(torch.isfinite(G).all()) or bool((diag < TINY_DIAGONAL).any())


def _row_scales(J: Tensor) -> Tensor:
    """Power-of-two ``≈ max_k |J_tk|`` per row (1 for zero rows), chunk by chunk, float64."""
    n, P = J.shape
    top = torch.zeros(n, dtype=torch.float64, device=J.device)
    step = _chunk_columns(J.device)
    for start in range(0, P, step):
        chunk = J[:, start : start + step].abs().amax(dim=1).to(torch.float64)
        top = torch.maximum(top, torch.nan_to_num(chunk, nan=0.0, posinf=0.0))
    top = torch.where(top > 0, top, torch.ones_like(top))
    return torch.exp2(torch.round(torch.log2(top)))  # exact rescaling: a power of two


def gramian(J: Tensor, device: torch.device | str | None = None) -> Tensor:
    """``G = J Jᵀ`` as a float64 ``[n, n]`` tensor, without copying ``J``.

    Built from column chunks of ``J`` and accumulated in float64. A float32 (or lower
    precision) ``J`` is multiplied chunk by chunk in float32 — as accurate as J itself — and
    redone with float64 products when that result is not trustworthy (a diagonal entry
    non-finite or below ``TINY_DIAGONAL``: squares that overflow or lose digits in float32).
    Float64 products of float32 numbers never overflow or underflow; only a float64 ``J``
    with rows beyond ~1e±150 needs its rows rescaled (by a power of two, chunk by chunk).

    The decision is taken on a CPU copy of ``G`` (one device-to-host transfer on an
    accelerator). Rows holding NaN or Inf give a non-finite row of ``G``; see
    :func:`first_nonfinite_row`. ``G`` is returned on ``device`` (default: :func:`solve_device`
    of J's device), symmetric.
    """
    if J.dim() != 2:
        raise ValueError(f"J must have shape [n, P], got shape {list(J.shape)}")
    J = J.detach()
    out = solve_device(J.device) if device is None else torch.device(device)
    G = _chunked_gramian(J, exact=J.dtype == torch.float64)
    host = G.to("cpu")
    if _needs_exact(host):
        if J.dtype != torch.float64:
            G = _chunked_gramian(J, exact=True)
            host = G.to("cpu")
        if not bool(torch.isfinite(host).all()) or bool(
            ((host.diagonal() < 1e-290) & (host.diagonal() != 0)).any()
        ):
            scale = _row_scales(J)
            G = _chunked_gramian(J, exact=True, scale=scale) * torch.outer(scale, scale)
            host = G.to("cpu")
    host = 0.5 * (host + host.T)
    return host if out.type == "cpu" else host.to(out)


def first_nonfinite_row(G: Tensor) -> int | None:
    """Index of the first row of ``G`` holding NaN or Inf (a non-finite task gradient), or None.

    Reads the device: call it on a host copy.
    """
    # A row of J with NaN or Inf makes its own diagonal entry non-finite (and pollutes the
    # off-diagonal entries of every other row), so the diagonal names the culprit.
    bad = ~torch.isfinite(G.diagonal())
    if not bool(bad.any()):
        bad = ~torch.isfinite(G).all(dim=1)
    if not bool(bad.any()):
        return None
    return int(bad.nonzero()[0, 0])


def normalized(G: Tensor) -> Tensor:
    """``G`` divided by its largest diagonal entry (unchanged when that is 0)."""
    top = G.diagonal().amax() if G.numel() else G.new_ones(())
    return G / torch.where(top > 0, top, torch.ones_like(top))


def normalized_gramian(J: Tensor) -> tuple[Tensor, Tensor]:
    """``(G / m, m)`` with ``G = J Jᵀ`` from :func:`gramian` (float64) and ``m = max_t G_tt``.

    Every solver of this package that works on the Gramian is invariant to a common scale of the
    gradients, so it runs on the normalised Gramian (largest diagonal entry 1): gradients scaled
    from 1e-15 to 1e15 give the same weights. ``m`` is 0 when every gradient is zero (then the
    normalised Gramian is all zeros).
    """
    G = gramian(J)
    m = G.diagonal().amax().clamp_min(0)
    return normalized(G), m


def unit_form(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(D⁻¹ G D⁻¹, D)`` of a float64 Gramian, ``D = (√G_tt)_t`` (1 for zero rows)."""
    G = 0.5 * (G + G.T)
    D = G.diagonal().clamp_min(0).sqrt()
    D = torch.where(D > 0, D, torch.ones_like(D))
    return G / (D[:, None] * D[None, :]), D


def unit_gramian(J: Tensor) -> tuple[Tensor, Tensor]:
    """``(D⁻¹ G D⁻¹, D)`` with ``G = J Jᵀ`` from :func:`gramian` and ``D = (‖g_t‖)_t`` (1 for zero
    rows), both float64.

    The unit-diagonal (correlation) form of the Gramian: for solvers whose solution transforms
    simply under a diagonal rescaling of the tasks (UPGrad's projections, Nash-MTL) it removes
    the spread of gradient norms (tasks 1e-6 and 1e6 apart) from the numerics.
    """
    return unit_form(gramian(J))


def combine(w: Tensor, J: Tensor) -> Tensor:
    """``d = Σ_t w_t g_t`` in ``J``'s dtype and device, never NaN or Inf for finite ``J``."""
    w = w.to(device=J.device, dtype=J.dtype)
    big = torch.finfo(J.dtype).max
    # In place: a second [P] tensor would raise the step's peak memory.
    return (w @ J).nan_to_num_(nan=0.0, posinf=big, neginf=-big)


def present_weights(
    weights: Tensor | None, n: int, present: Tensor | None, device: torch.device
) -> Tensor:
    """Per-task preference weights of the ``n`` tasks present, float64 on ``device``: uniform
    ``1/n`` when ``weights`` is None, else the user's weights of the present tasks (unnormalised).
    """
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    w = weights.to(device=device, dtype=torch.float64)
    return w if present is None else w[present.to(device)]


def random_orders(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """For each task ``i`` a random order of the other tasks: a long tensor ``[n, n - 1]``.

    Drawn on the generator's device (CPU for ``None``: the global CPU RNG), so a seed gives the
    same orders on every device; then moved to ``device`` (``n²`` integers, not per-parameter).
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand(n, n, generator=generator, device=gdev)
    keys.fill_diagonal_(2.0)  # task i itself sorts last and is dropped
    return keys.argsort(dim=1)[:, : n - 1].to(device)


# --------------------------------------------------------------------------- min-norm point


@lru_cache(maxsize=32)
def _supports(n: int, device: torch.device) -> Tensor:
    """Every non-empty subset of ``range(n)`` as a bool mask ``[2^n - 1, n]``."""
    rows = [bits for bits in itertools.product((False, True), repeat=n) if any(bits)]
    return torch.tensor(rows, dtype=torch.bool, device=device)


def _face_systems(G: Tensor, masks: Tensor) -> Tensor:
    """KKT matrices ``[[G_S, -1], [1ᵀ, 0]]`` of every face, embedded in ``(n+1) x (n+1)``.

    Coordinates outside the face get the row ``w_t = 0``.
    """
    n = G.shape[0]
    both = masks[:, :, None] & masks[:, None, :]
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    K = G.new_zeros(masks.shape[0], n + 1, n + 1)
    K[:, :n, :n] = torch.where(both, G, eye * (~masks[:, :, None]))
    m = masks.to(G.dtype)
    K[:, :n, n] = -m
    K[:, n, :n] = m
    return K


def _refine(G: Tensor, K_reg: Tensor, masks: Tensor, x: Tensor, steps: int) -> Tensor:
    """Iterative refinement of regularised face solutions towards the unregularised ones."""
    K = _face_systems(G, masks)
    b = torch.zeros_like(x)
    b[..., -1] = 1.0
    LU, piv, _ = torch.linalg.lu_factor_ex(K_reg)
    for _ in range(steps):
        r = b - (K @ x.unsqueeze(-1)).squeeze(-1)
        x = x + torch.linalg.lu_solve(LU, piv, r.unsqueeze(-1)).squeeze(-1)
    return x


def _min_norm_enumerate(G: Tensor, delta: float) -> Tensor:
    n = G.shape[0]
    masks = _supports(n, G.device)
    Greg = G + delta * torch.eye(n, dtype=G.dtype, device=G.device)
    K = _face_systems(Greg, masks)
    b = G.new_zeros(masks.shape[0], n + 1)
    b[:, n] = 1.0
    x, _ = torch.linalg.solve_ex(K, b)  # no host synchronisation; the KKT matrices of the
    w = x[:, :n]  # regularised faces are non-singular
    ok = torch.isfinite(x).all(dim=1) & (w >= -1e-12).all(dim=1)
    wc = w.clamp_min(0)
    obj = torch.einsum("si,ij,sj->s", wc, Greg, wc)
    obj = torch.where(ok, obj, torch.full_like(obj, float("inf")))
    best = obj.argmin().reshape(1)  # stays on the device: no host synchronisation
    # Undo the regularisation on the chosen face (iterative refinement towards G's solution).
    mask = masks.index_select(0, best)
    x_best = x.index_select(0, best)
    xr = _refine(G, _face_systems(Greg, mask), mask, x_best, steps=3)[0, :n]
    return _to_simplex(torch.where(mask[0], xr, 0.0), wc.index_select(0, best)[0])


def _to_simplex(w: Tensor, fallback: Tensor) -> Tensor:
    w = torch.nan_to_num(w, nan=-1.0).clamp_min(0)
    s = w.sum()
    good = torch.isfinite(s) & (s > 0.5)
    return torch.where(good, w / torch.where(good, s, torch.ones_like(s)), fallback)


def _min_norm_wolfe(G: Tensor, delta: float, max_iter: int = 1000) -> Tensor:
    """Wolfe's (1976) finite active-set method for the min-norm point, on the Gramian.

    Synchronises with the host at every step (data-dependent control flow); used for large ``n``
    where enumerating supports is too costly.
    """
    n = G.shape[0]
    Greg = G + delta * torch.eye(n, dtype=G.dtype, device=G.device)
    tol = 1e-13
    S = [int(Greg.diagonal().argmin())]
    w = torch.zeros(n, dtype=G.dtype, device=G.device)
    w[S[0]] = 1.0

    def affine_min(S: list[int]) -> Tensor:
        k = len(S)
        idx = torch.tensor(S, device=G.device)
        K = G.new_zeros(k + 1, k + 1)
        K[:k, :k] = Greg[idx][:, idx]
        K[:k, k] = -1.0
        K[k, :k] = 1.0
        b = G.new_zeros(k + 1)
        b[k] = 1.0
        return torch.linalg.solve(K, b)[:k]

    for _ in range(max_iter):
        Gw = Greg @ w
        obj = w @ Gw
        t = int(Gw.argmin())
        if float(Gw[t]) >= float(obj) - tol or t in S:
            break
        S.append(t)
        for _ in range(n + 1):  # minor cycles: each drops at least one index
            y = affine_min(S)
            idx = torch.tensor(S, device=G.device)
            ws = w[idx]
            if bool((y > 0).all()):
                w = torch.zeros_like(w)
                w[idx] = y
                break
            neg = y <= 0
            theta = (ws[neg] / (ws[neg] - y[neg])).min().clamp(0, 1)
            ws = ws + theta * (y - ws)
            w = torch.zeros_like(w)
            w[idx] = ws.clamp_min(0)
            S = [s for s, keep in zip(S, (ws > 1e-15).tolist(), strict=True) if keep]
            if not S:  # numerical safety; cannot happen in exact arithmetic
                S = [int(Greg.diagonal().argmin())]
                w = torch.zeros_like(w)
                w[S[0]] = 1.0
                break
    # Undo the regularisation on the final face.
    mask = torch.zeros(1, n, dtype=torch.bool, device=G.device)
    mask[0, S] = True
    x = torch.cat([w, (Greg @ w).dot(w).reshape(1)]).unsqueeze(0)
    xr = _refine(G, _face_systems(Greg, mask), mask, x, steps=3)[0, :n]
    return _to_simplex(torch.where(mask[0], xr, 0.0), w / w.sum())


def _min_norm_two(G: Tensor) -> Tensor:
    denom = G[0, 0] + G[1, 1] - 2 * G[0, 1]  # ‖g_1 − g_2‖²
    num = G[1, 1] - G[0, 1]  # (g_2 − g_1)·g_2
    # Below rounding level the rows are identical: any w gives the same point; split evenly.
    distinct = denom > 1e-14 * (G[0, 0] + G[1, 1])
    w1 = torch.where(distinct, num / torch.where(distinct, denom, 1.0), 0.5).clamp(0, 1)
    return torch.stack([w1, 1 - w1])


def min_norm_weights(G: Tensor, method: str = "auto") -> Tensor:
    """Weights of the min-norm point of the convex hull of the rows of ``J``, from ``G = J Jᵀ``.

    Solves ``min_w wᵀ G w`` subject to ``w ≥ 0``, ``Σ w = 1`` exactly (Sener & Koltun, NeurIPS
    2018, solve this problem approximately by Frank-Wolfe; here it is solved to float64 accuracy):

    * two tasks (``method="auto"``): the closed form
      ``w_1 = clip((g_2 − g_1)·g_2 / ‖g_1 − g_2‖², 0, 1)`` (``½`` when ``g_1 = g_2``);
    * ``method="enumerate"`` (default for ``3 ≤ n ≤ 8``): the optimum lies in the relative interior
      of one face of the simplex, where it solves the face's KKT system
      ``G_S w_S = λ·1, 1ᵀ w_S = 1``. Every face's system is solved in one batched call (no host
      synchronisation); the feasible candidate (``w ≥ 0``) with the smallest objective wins.
    * ``method="wolfe"`` (default for larger ``n``): Wolfe's finite active-set algorithm
      ("Finding the nearest point in a polytope", Math. Programming 1976), on the Gramian.

    Degenerate Gramians (zero, identical, colinear or opposite rows, rank deficiency) are handled
    by solving with ``G + δI``, ``δ = 1e-10·max diag(G)`` - which makes the solution unique, so
    identical tasks get equal weights and a zero Gramian gives uniform weights - and then
    iteratively refining the chosen face's solution with the unregularised ``G``. The result
    satisfies the KKT conditions ``(Gw)_t ≥ wᵀGw`` for all ``t`` (equality where ``w_t > 0``)
    up to about ``1e-12·max diag(G)``. ``G`` is normalised by its largest diagonal entry first,
    so any scale works.

    Returns ``w`` with ``G``'s dtype and device (computed in float64).
    """
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"G must be a non-empty square matrix [n, n], got shape {list(G.shape)}")
    if method not in ("auto", "enumerate", "wolfe"):
        raise ValueError(f"method must be 'auto', 'enumerate' or 'wolfe', got {method!r}")
    n = G.shape[0]
    dtype, device = G.dtype, G.device
    G64 = G.detach().to(device=solve_device(device), dtype=torch.float64)
    G64 = normalized(torch.nan_to_num(0.5 * (G64 + G64.T)))
    if n == 1:
        w = G64.new_ones(1)
    elif n == 2 and method == "auto":
        w = _min_norm_two(G64)
    elif method == "enumerate" or (method == "auto" and n <= ENUMERATE_MAX):
        w = _min_norm_enumerate(G64, 1e-10)
    else:
        w = _min_norm_wolfe(G64, 1e-10)
    return w.to(device=device, dtype=dtype)
