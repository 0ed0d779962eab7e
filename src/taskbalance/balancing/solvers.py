"""Small solvers on the ``n x n`` Gramian ``G = J Jᵀ`` of the per-task gradients.

Everything here works on the Gramian (cheap for any number of parameters ``P``), in torch, on
the device of the gradients, and in ``float64`` whatever the dtype of ``J``: the systems are
tiny, and float64 keeps gradients of very different scales (``1e-15`` next to ``1e15``) exact.
The active-set solvers (:func:`dual_cone_weights`, :func:`min_norm_weights`) run in numpy on a
host copy of the Gramian (one transfer from an accelerator, no reads in their loops): on
``40 x 40`` systems torch's per-operation overhead dominates.

* :func:`gramian` - ``G`` in float64, robust to the scale of the rows; :func:`normalized` -
  ``G`` divided by its largest diagonal entry (the methods here are scale-invariant);
  :func:`normalized_gramian` and :func:`unit_gramian` - both straight from ``J``;
* :func:`min_norm_weights` - the exact min-norm point of the convex hull of the rows (MGDA);
* :func:`combine` - ``d = wᵀ J`` back in ``J``'s dtype;
* :func:`random_orders` - reproducible random task orders (PCGrad, GradVac);
* :func:`dual_cone_weights` - projections onto the dual cone of the rows (UPGrad, CAGrad,
  DualProj); :func:`project_simplex` - Euclidean projection onto the simplex (CAGrad, MoCo,
  MoDo, SDMGrad);
* :func:`solve_device` - where the float64 work runs (the gradients' device; CPU for MPS).

Nothing here copies ``J`` to the host; the only per-parameter work is ``J Jᵀ`` and ``wᵀ J``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "dual_cone_weights",
    "project_simplex",
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
    "first_nonfinite_row_of",
]

#: Largest ``n`` for which :func:`min_norm_weights`'s exact fallback enumerates every support
#: (``2^n - 1`` faces, batched); larger problems fall back to Wolfe's active-set method.
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


def chunk_columns(device: torch.device) -> int:
    """Columns of a ``[T, P]`` matrix per chunk of column-wise work on ``device``."""
    return CHUNK_COLUMNS_CPU if device.type == "cpu" else CHUNK_COLUMNS_ACCELERATOR


def column_chunks(J: Tensor, step: int) -> Iterator[Tensor]:
    """``[n, c]`` column chunks of ``J`` (views, at most ``step`` columns), in column order."""
    for start in range(0, J.shape[1], step):
        yield J[:, start : start + step]


def _chunked_gramian(J: Tensor, exact: bool, scale: Tensor | None = None) -> Tensor:
    """``Σ_chunks J_c J_cᵀ`` accumulated in float64 on ``J``'s device, never copying all of J.

    ``exact=False``: each chunk product in float32 (fast; J's precision is float32 at best);
    ``exact=True``: chunks converted to float64 first. ``scale``: divide row t by ``scale[t]``
    chunk by chunk (rows too large or too small for float64 squares).
    """
    n = J.shape[0]
    G = torch.zeros(n, n, dtype=torch.float64, device=J.device)
    work = torch.float64 if exact else torch.float32
    for Jc in column_chunks(J, chunk_columns(J.device)):
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
    top = torch.zeros(J.shape[0], dtype=torch.float64, device=J.device)
    for Jc in column_chunks(J, chunk_columns(J.device)):
        chunk = Jc.abs().amax(dim=1).to(torch.float64)
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


def first_nonfinite_row_of(J: Tensor) -> int | None:
    """Index of the first row of ``J`` holding NaN or Inf, or None: one row sum (a full
    ``isfinite(J)`` mask would cost more than ``J Jᵀ``) and one host read; the exact
    check, in column chunks, only when that sum is not finite."""
    # Fast path: a row sum is finite when the row is, unless huge entries add up to Inf (then
    # the exact check below decides).
    if bool(torch.isfinite(J.sum(dim=1)).all()):
        return None
    ok = torch.ones(J.shape[0], dtype=torch.bool, device=J.device)
    step = chunk_columns(J.device)
    for start in range(0, J.shape[1], step):
        ok &= torch.isfinite(J[:, start : start + step]).all(dim=1)
    if bool(ok.all()):
        return None
    return int((~ok).nonzero()[0, 0])


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


def present_preferences(
    weights: Tensor | None, n: int, present: Tensor | None, device: torch.device
) -> Tensor:
    """:func:`present_weights` normalised to sum to 1 over the ``n`` tasks present (uniform
    ``1/n`` when the user's weights of those tasks are all zero)."""
    p = present_weights(weights, n, present, device)
    if weights is None:
        return p
    total = p.sum()
    return torch.where(total > 0, p / torch.where(total > 0, total, 1.0), 1.0 / n)


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

#
# Everything below works on the unit-diagonal form of the Gramian: with D = diag(‖g_t‖) and
# unit rows u_t = g_t/‖g_t‖, the point d = Σ w_t g_t = Σ y_t u_t with y_t = w_t‖g_t‖, so the
# problem  min ‖d‖², w ≥ 0, Σ w = 1  becomes  min yᵀCy, y ≥ 0, bᵀy = 1  with C = D⁻¹GD⁻¹ (entries
# in [-1, 1]) and b = 1/D. Row norms spread over 12 orders of magnitude then only enter through
# the vector b, never through the conditioning of the systems solved, and a row's weight comes
# out as w_t = y_t b_t, directly (no 1 − Σ others that cancels).

#: Ridge added to C (i.e. ``RIDGE·‖g_t‖²`` to each row's own diagonal entry of G): it makes the
#: regularised problem strictly convex (identical rows get equal weights, a zero Gramian uniform
#: weights) without drowning small rows, and is removed again on the chosen face.
RIDGE = 1e-10

#: Rounding allowance of the KKT measure, per row of C: residuals of ``C y`` are accurate to
#: about ``n · eps · Σ|y|`` (|C| ≤ 1), and violations below that are not counted.
_EPS = float(torch.finfo(torch.float64).eps)


@lru_cache(maxsize=32)
def _supports(n: int, device: torch.device) -> Tensor:
    """Every non-empty subset of ``range(n)`` as a bool mask ``[2^n - 1, n]``."""
    rows = [bits for bits in itertools.product((False, True), repeat=n) if any(bits)]
    return torch.tensor(rows, dtype=torch.bool, device=device)


def _face_systems(C: Tensor, b: Tensor, masks: Tensor) -> Tensor:
    """KKT matrices ``[[C_S, -b_S], [b_Sᵀ, 0]]`` of every face, embedded in ``(n+1) x (n+1)``.

    Coordinates outside the face get the row ``y_t = 0``.
    """
    n = C.shape[0]
    both = masks[:, :, None] & masks[:, None, :]
    eye = torch.eye(n, dtype=C.dtype, device=C.device)
    K = C.new_zeros(masks.shape[0], n + 1, n + 1)
    K[:, :n, :n] = torch.where(both, C, eye * (~masks[:, :, None]))
    mb = masks.to(C.dtype) * b
    K[:, :n, n] = -mb
    K[:, n, :n] = mb
    return K


def _kkt_score(C: Tensor, b: Tensor, y: Tensor) -> Tensor:
    """Relative KKT residual of candidate points ``y`` ``[m, n]`` (``inf`` where infeasible).

    With ``λ = yᵀCy`` (``= ‖d‖²`` when ``bᵀy = 1``) the conditions are ``r = Cy − λb ≥ 0`` and
    ``r_t = 0`` where ``y_t > 0``. In the original units ``r_t/‖d‖ = (g_t·d − ‖d‖²)/(‖g_t‖‖d‖)``,
    so the score is the largest violation of ``g_t·d ≥ ‖d‖²`` relative to ``‖g_t‖‖d‖``, and of
    ``r_t = 0`` on the support, where ``min(|r_t|, y_t)/‖d‖`` counts (``y_t = w_t‖g_t‖`` is row
    t's share of d). Violations below the rounding allowance do not count.
    """
    total = y.abs().sum(-1)
    s = (y * b).sum(-1)
    feasible = torch.isfinite(y).all(-1) & (y >= -1e-12 * total[:, None]).all(-1) & (s > 0)
    y = y.clamp_min(0) / torch.where(s > 0, s, torch.ones_like(s))[:, None]
    Cy = y @ C
    lam = (y * Cy).sum(-1)
    r = Cy - lam[:, None] * b
    allowance = 4 * C.shape[0] * _EPS * y.sum(-1, keepdim=True)
    dual = (-r - allowance).clamp_min(0).amax(-1)
    # Complementarity: r_t = 0 where y_t > 0, unless row t's whole share of d (y_t, as
    # ‖u_t‖ = 1) is negligible: min(|r_t|, y_t) relative to ‖d‖.
    slack = torch.minimum((r.abs() - allowance).clamp_min(0), y).amax(-1)
    scale = lam.clamp_min(0).sqrt() + _EPS * y.sum(-1)
    score = torch.maximum(dual, slack) / scale
    return torch.where(feasible & torch.isfinite(score), score, torch.full_like(score, torch.inf))


def _choose(C: Tensor, b: Tensor, y: Tensor, keep_first: bool = False) -> Tensor:
    """Index (shape ``[1]``) of the best candidate point among the rows of ``y`` ``[m, n]``.

    A relative KKT residual alone cannot rank points: ``g_t·d ≥ ‖d‖²`` relative to
    ``‖g_t‖‖d‖`` is nearly met by a point far from the optimum when ``‖g_t‖ ≫ ‖d‖``. So only
    candidates whose objective ``‖d‖²`` is within rounding of the smallest compete, and the
    smallest KKT residual among them wins; with ``keep_first`` the first candidate wins if it
    competes and its residual is below ``_ACCEPT`` (it carries the ridge's tie-break).
    """
    score = _kkt_score(C, b, y)
    yc = y.clamp_min(0)
    s = (yc * b).sum(-1)
    yc = yc / torch.where(s > 0, s, torch.ones_like(s))[:, None]
    lam = (yc * (yc @ C)).sum(-1)
    lam = torch.where(torch.isfinite(score), lam, torch.full_like(lam, torch.inf))
    tol = 8 * C.shape[0] * _EPS * yc.sum(-1) ** 2  # rounding of yᵀCy (|C| ≤ 1)
    competes = (lam - tol) <= (lam + tol).min()
    ranked = torch.where(competes, score, torch.full_like(score, torch.inf))
    best = ranked.argmin()
    if keep_first:
        best = torch.where(competes[0] & (score[0] <= _ACCEPT), 0, best)
    return best.reshape(1)


#: A regularised answer whose KKT residual in the unregularised problem is at most this is kept
#: (it carries the ridge's tie-break); otherwise the best unregularised candidate is used.
_ACCEPT = 1e-11


def _solve_face(C: Tensor, b: Tensor, mask: Tensor, y0: Tensor, steps: int = 6) -> Tensor:
    """The chosen face's regularised solution ``y0`` ``[1, n]``, freed of the ridge.

    Two ways back to the unregularised face system: a direct solve (plus refinement) where that
    system is regular, and iterative refinement with the regularised factorisation, which keeps
    the regularised null-space component where it is singular (identical or affinely dependent
    rows). Of ``y0`` and these two, the point with the smallest KKT residual is returned (no
    host synchronisation).
    """
    n = C.shape[0]
    eye = torch.eye(n, dtype=C.dtype, device=C.device)
    K = _face_systems(C, b, mask)
    rhs = C.new_zeros(1, n + 1, 1)
    rhs[:, n] = 1.0

    def refine(LU: Tensor, piv: Tensor, x: Tensor) -> Tensor:
        for _ in range(steps):
            x = x + torch.linalg.lu_solve(LU, piv, rhs - K @ x)
        return x

    LU_reg, piv_reg, _ = torch.linalg.lu_factor_ex(_face_systems(C + RIDGE * eye, b, mask))
    lam0 = (y0 @ (C + RIDGE * eye) * y0).sum(-1, keepdim=True)
    x_reg = refine(LU_reg, piv_reg, torch.cat([y0, lam0], dim=-1).unsqueeze(-1))
    LU, piv, _ = torch.linalg.lu_factor_ex(K)  # singular faces give non-finite x: scored inf
    x_dir = refine(LU, piv, torch.linalg.lu_solve(LU, piv, rhs))
    cand = torch.cat(
        [y0, torch.where(mask, x_reg[:, :n, 0], 0.0), torch.where(mask, x_dir[:, :n, 0], 0.0)]
    )
    return cand.index_select(0, _choose(C, b, cand))


def _min_norm_enumerate(C: Tensor, b: Tensor) -> Tensor:
    """Solve every face's KKT system in two batched calls; keep the KKT point."""
    n = C.shape[0]
    masks = _supports(n, C.device)
    C_reg = C + RIDGE * torch.eye(n, dtype=C.dtype, device=C.device)
    rhs = C.new_zeros(masks.shape[0], n + 1)
    rhs[:, n] = 1.0
    x, _ = torch.linalg.solve_ex(_face_systems(C_reg, b, masks), rhs)  # all regular
    y = x[:, :n]
    # The regularised problem is strictly convex: exactly one face's solution is feasible and
    # satisfies the KKT conditions. Choose it by its KKT residual, not by the objective (a
    # wrong face within rounding of the optimal objective can be 1e-8 away in d).
    best = _choose(C_reg, b, y)  # stays on the device
    y_reg = _solve_face(C, b, masks.index_select(0, best), y.index_select(0, best))
    # Where gradients nearly cancel (‖d‖ ≪ Σ y) the ridge can move the optimum to another
    # face; then every face's unregularised solution competes (singular faces score inf).
    x0, _ = torch.linalg.solve_ex(_face_systems(C, b, masks), rhs)
    cand = torch.cat([y_reg, torch.where(masks, x0[:, :n], 0.0)])
    return cand.index_select(0, _choose(C, b, cand, keep_first=True))


def _affine_min(Ms: tuple[np.ndarray, ...], b: np.ndarray, S: list[int]) -> np.ndarray:
    """Minimiser of ``yᵀMy`` on the affine hull ``{y_S : b_Sᵀy_S = 1}``, with the first of the
    matrices ``Ms`` whose KKT system is regular (its solution finite)."""
    k = len(S)
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    z = np.full(k + 1, np.nan)
    for M in Ms:
        K = np.zeros((k + 1, k + 1))
        K[:k, :k] = M[np.ix_(S, S)]
        K[:k, k] = -b[S]
        K[k, :k] = b[S]
        try:
            z = np.linalg.solve(K, rhs)
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(z).all():
            break
    return z[:k]


def _corral(
    Ms: tuple[np.ndarray, ...], b: np.ndarray, S: list[int], y: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """Wolfe's minor cycles: move to the affine minimiser of S, dropping indices that turn
    negative, until it is feasible (each cycle drops at least one index)."""
    n = b.shape[0]
    for _ in range(n + 1):
        z = _affine_min(Ms, b, S)
        ys = y[S]
        if (z > 0).all():
            y = np.zeros(n)
            y[S] = z
            return S, y
        neg = z <= 0
        theta = min(max(float((ys[neg] / (ys[neg] - z[neg])).min()), 0.0), 1.0)
        ys = ys + theta * (z - ys)
        y = np.zeros(n)
        y[S] = np.maximum(ys, 0.0)
        keep = ys > 1e-15 * np.abs(ys).sum()
        S = [s for s, k in zip(S, keep, strict=True) if k]
        if not S:  # numerical safety; cannot happen in exact arithmetic
            t0 = int((Ms[0].diagonal() / b**2).argmin())
            y = np.zeros(n)
            y[t0] = 1.0 / b[t0]
            return [t0], y
    return S, y


def _wolfe(
    C: Tensor, C_solve: Tensor, b: Tensor, y: Tensor, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Wolfe's major and minor cycles from the feasible point ``y`` (``bᵀy = 1``) on ``C_solve``;
    affine minimisations fall back to ``C`` plus the ridge where ``C_solve``'s is singular.
    Returns the point and its support mask ``[1, n]``.

    Runs in numpy on host copies (data-dependent control flow on tiny systems: per-operation
    overhead dominates)."""
    n = C.shape[0]
    Cn = C.detach().cpu().numpy()
    Ms = (C_solve.detach().cpu().numpy(), Cn + RIDGE * np.eye(n))
    bn = b.detach().cpu().numpy()
    yn = y.detach().cpu().numpy()
    S, yn = _corral(Ms, bn, [int(t) for t in np.flatnonzero(yn > 0)], yn)  # a warm start
    for _ in range(max_iter):  # need not be its face's minimiser
        Cy = Ms[0] @ yn
        lam = float(yn @ Cy)
        total = float(np.abs(yn).sum())
        viol = (lam * bn - Cy - 4 * n * _EPS * total) / (np.sqrt(max(lam, 0.0)) + _EPS * total)
        t = int(viol.argmax())
        if viol[t] <= 0 or t in S:
            break
        S, yn = _corral(Ms, bn, [*S, t], yn)
    mask = torch.zeros(1, n, dtype=torch.bool, device=C.device)
    mask[0, S] = True
    return torch.from_numpy(yn).to(C).unsqueeze(0), mask


def _min_norm_wolfe(C: Tensor, b: Tensor, max_iter: int = 1000) -> Tensor:
    """Wolfe's (1976) finite active-set method for the min-norm point, in the unit form: on the
    regularised problem, then (where gradients nearly cancel and the ridge moved the optimum)
    warm-started on the unregularised one.

    Data-dependent control flow (runs on the host copy); the fallback for large ``n``, where
    enumerating supports is too costly.
    """
    n = C.shape[0]
    C_reg = C + RIDGE * torch.eye(n, dtype=C.dtype, device=C.device)
    t0 = int((C_reg.diagonal() / b**2).argmin())  # the vertex of smallest norm
    y = torch.zeros(n, dtype=C.dtype, device=C.device)
    y[t0] = 1.0 / b[t0]
    y1, mask = _wolfe(C, C_reg, b, y, max_iter)
    y1 = _solve_face(C, b, mask, y1)
    if float(_kkt_score(C, b, y1)[0]) <= _ACCEPT:
        return y1
    start = y1[0].clamp_min(0)
    y2, mask = _wolfe(C, C, b, start / (start * b).sum(), max_iter)
    # Two opposite rows far longer than the rest cancel exactly in their own face, while the
    # Gramian's √eps resolution of u_s + u_t can mislead the larger faces: every pair's face
    # competes too (one batched solve of n(n−1)/2 small systems).
    pairs = torch.combinations(torch.arange(n, device=C.device), 2)
    masks = torch.zeros(pairs.shape[0], n, dtype=torch.bool, device=C.device)
    masks.scatter_(1, pairs, True)
    rhs = C.new_zeros(masks.shape[0], n + 1)
    rhs[:, n] = 1.0
    x, _ = torch.linalg.solve_ex(_face_systems(C, b, masks), rhs)
    cand = torch.cat([y1, _solve_face(C, b, mask, y2), torch.where(masks, x[:, :n], 0.0)])
    return cand.index_select(0, _choose(C, b, cand, keep_first=True))


def _host_min_norm_form(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(C, b)``: the unit form ``C = D⁻¹GD⁻¹`` of a symmetric host Gramian without zero rows,
    with an exact unit diagonal, and ``b = 1/‖g_t‖`` scaled to ``max b = 1`` (scaling b by a
    constant only scales y)."""
    D = np.sqrt(np.diagonal(g))
    C = g / (D[:, None] * D[None, :])
    np.fill_diagonal(C, 1.0)
    b = 1.0 / D
    return C, b / b.max()


def _host_kkt_score(C: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    """:func:`_kkt_score` of one point ``y`` ``[n]`` (``bᵀy = 1``, ``y ≥ 0``), in numpy."""
    Cy = C @ y
    lam = float(y @ Cy)
    r = Cy - lam * b
    total = float(y.sum())
    allowance = 4 * C.shape[0] * _EPS * total
    dual = float(np.maximum(-r - allowance, 0.0).max())
    slack = float(np.minimum(np.maximum(np.abs(r) - allowance, 0.0), y).max())
    score = max(dual, slack) / (np.sqrt(max(lam, 0.0)) + _EPS * total)
    return score if np.isfinite(score) else np.inf


def _min_norm_nnls(C: np.ndarray, b: np.ndarray, steps: int = 12) -> np.ndarray | None:
    """The min-norm point in the unit form from a non-negative least squares problem.

    Least distance programming (Lawson & Hanson, *Solving Least Squares Problems*, ch. 23):
    with unit rows ``U``, ``min_{u ≥ 0} ‖Uᵀu‖² + (1 − bᵀu)²`` — in Gram form
    ``min_{u ≥ 0} ½uᵀ(C + bbᵀ)u − bᵀu`` — has the KKT conditions ``r = Cu − (1 − s)b ≥ 0``,
    ``u ≥ 0``, ``uᵀr = 0`` with ``s = bᵀu``; they give ``uᵀCu = s(1 − s)``, so ``s > 0`` (``u = 0``
    has ``r = −b < 0``), and ``y = u/s`` satisfies ``Cy − λb ≥ 0`` with equality on the support
    and ``λ = (1 − s)/s = yᵀCy``: the KKT conditions of ``min yᵀCy, y ≥ 0, bᵀy = 1``.

    The support comes from block principal pivoting with the :data:`RIDGE` (Lawson-Hanson if
    pivoting stalls); on it, ``(C + bbᵀ)_S u_S = b_S`` is solved by iterative refinement with a
    regularised inverse, which removes the ridge and gives identical rows equal weights (the
    minimum-norm solution). Returns ``y``, or ``None`` if the numbers broke down; the caller
    checks the KKT conditions (a support the ridge moved fails them).
    """
    n = b.shape[0]
    M = C + np.outer(b, b)
    support = _nnls_pivoting(M, b, 3 * n + 10)
    if support is None:
        mu = _lawson_hanson(M, -b[None, :], _NNLS_TOL, RIDGE, 3 * n + 10)[0]
        support = np.flatnonzero(mu > 0)
    if support.size == 0:
        return None
    M_S = M[np.ix_(support, support)]
    # Refinement from the ridge's solution of the face, with a ridge large enough that rounding
    # leaves the null space of M_S (identical rows) alone: it converges to the minimum-norm
    # solution of M_S x = b_S (b_S is in M_S's range), so identical rows get equal weights.
    inv = np.linalg.inv(M_S + _REFINE_RIDGE * np.eye(support.size))
    x = inv @ b[support]
    for _ in range(steps):
        step = inv @ (b[support] - M_S @ x)
        x = x + step
        if np.abs(step).max() <= 1e-14 * np.abs(x).max():  # converged to rounding
            break
    u = np.zeros(n)
    u[support] = np.maximum(x, 0.0)
    s = float(b @ u)
    return u / s if s > 0 and np.isfinite(s) else None


#: Ridge of the refinement in :func:`_min_norm_nnls`: each step shrinks the error on an
#: eigenvalue λ of the face's matrix by ``δ/(λ + δ)``, and rounding puts ``eps/δ`` into its null
#: space.
_REFINE_RIDGE = 1e-6

#: Sign tolerance of the min-norm NNLS (its matrix ``C + bbᵀ`` has entries of order 1).
_NNLS_TOL = 1e-13


def _nnls_pivoting(M: np.ndarray, b: np.ndarray, max_iter: int) -> np.ndarray | None:
    """``min_{u ≥ 0} ½uᵀ(M + RIDGE·I)u − bᵀu`` for one ``b > 0`` by block principal pivoting
    (the rules of :func:`_principal_pivoting`, unbatched: this is on every MGDA step).

    Returns the support (indices where ``u > 0``), or ``None`` if it did not terminate in
    ``max_iter`` sweeps.
    """
    n = b.shape[0]
    free = np.ones(n, dtype=bool)  # b > 0: every variable starts free
    best, trials = n + 1, 3
    for _ in range(max_iter):
        idx = np.flatnonzero(free)
        z = np.linalg.solve(M[np.ix_(idx, idx)] + RIDGE * np.eye(idx.size), b[idx])
        u = np.zeros(n)
        u[idx] = z
        infeasible = np.where(free, u < -_NNLS_TOL, M @ u - b < -_NNLS_TOL)
        count = int(infeasible.sum())
        if count == 0:
            return idx[z > 0]
        if count < best:
            best, trials = count, 3
        elif trials > 0:
            trials -= 1
        else:  # only the last infeasible variable changes side (terminates)
            last = int(np.flatnonzero(infeasible)[-1])
            infeasible = np.zeros(n, dtype=bool)
            infeasible[last] = True
        free ^= infeasible
    return None


def _min_norm_two(g: np.ndarray) -> np.ndarray:
    """Closed form for two rows; each weight from its own numerator (no ``1 − w_1``)."""
    denom = g[0, 0] + g[1, 1] - 2 * g[0, 1]  # ‖g_1 − g_2‖²
    num = np.array([g[1, 1] - g[0, 1], g[0, 0] - g[0, 1]])  # (g_2 − g_1)·g_2, (g_1 − g_2)·g_1
    # Below rounding level the rows are identical: any w gives the same point; split evenly.
    if not denom > 1e-14 * (g[0, 0] + g[1, 1]):
        return np.full(2, 0.5)
    w = np.clip(num / denom, 0.0, 1.0)
    if (w == 0).any():  # a clipped weight leaves the other row alone at weight 1 (exactly)
        w = (w > 0).astype(np.float64)
    return w / w.sum()


def _min_norm_host(g: np.ndarray, method: str) -> np.ndarray:
    """:func:`min_norm_weights` on a normalised symmetric host Gramian ``g`` (float64)."""
    n = g.shape[0]
    zero = np.diagonal(g) <= 0
    if zero.any():  # a zero row makes the min-norm point 0 exactly: the weight goes to them
        return zero / zero.sum()
    if n == 1:
        return np.ones(1)
    if n == 2 and method == "auto":
        return _min_norm_two(g)
    C, b = _host_min_norm_form(g)
    y = _min_norm_nnls(C, b) if method == "auto" else None
    if y is None or _host_kkt_score(C, b, y) > _ACCEPT:
        Ct, bt = torch.from_numpy(C), torch.from_numpy(b)  # the exact fallbacks, on the host
        if method == "enumerate" or (method == "auto" and n <= ENUMERATE_MAX):
            y = _min_norm_enumerate(Ct, bt)[0].numpy()
        else:
            y = _min_norm_wolfe(Ct, bt)[0].numpy()
    w = np.maximum(y * b, 0.0)
    return w / w.sum()


def min_norm_weights(G: Tensor, method: str = "auto") -> Tensor:
    """Weights of the min-norm point of the convex hull of the rows of ``J``, from ``G = J Jᵀ``.

    Solves ``min_w wᵀ G w`` subject to ``w ≥ 0``, ``Σ w = 1`` exactly (Sener & Koltun, NeurIPS
    2018, solve this problem approximately by Frank-Wolfe; here it is solved to float64 accuracy),
    on a host copy of ``G`` (one transfer from an accelerator; nothing is read back in a loop):

    * two tasks (``method="auto"``): the closed form
      ``w_1 = clip((g_2 − g_1)·g_2 / ‖g_1 − g_2‖², 0, 1)``, ``w_2`` from its own numerator
      ``(g_1 − g_2)·g_1`` (``½`` each when ``g_1 = g_2``);
    * more tasks (``method="auto"``): the equivalent non-negative least squares problem
      ``min_{u ≥ 0} ‖Jᵀu‖² + (1 − Σu)²``, ``w = u/Σu`` (least distance programming, Lawson &
      Hanson ch. 23, in the unit form below), solved by block principal pivoting (one to a few
      sweeps of one linear solve each; 0.1-0.3 ms per call at ``n = 3..40`` on a loaded CPU,
      12-24x faster than the fallbacks). Its answer is kept when it satisfies the KKT
      conditions below to ``1e-11`` (relative); otherwise (gradients that nearly cancel, where
      the ridge moves the support) the exact fallback runs: enumeration for ``n ≤ 8``, Wolfe's
      method beyond;
    * ``method="enumerate"`` (the fallback for ``3 ≤ n ≤ 8``): the optimum lies in the relative
      interior of one face of the simplex, where it solves the face's KKT system. Every face's
      system is solved in one batched call; the feasible candidate that satisfies the KKT
      conditions wins.
    * ``method="wolfe"`` (the fallback for larger ``n``): Wolfe's finite active-set algorithm
      ("Finding the nearest point in a polytope", Math. Programming 1976).

    The systems are solved in the unit-diagonal form ``C = D⁻¹GD⁻¹`` (``D = diag(‖g_t‖)``), so
    row norms spread over many orders of magnitude (1e-6 next to 1e6) do not degrade them.
    Degenerate Gramians (zero, identical, colinear or opposite rows) are handled by solving with
    ``C + δI`` (``δ = 1e-10``, i.e. ``δ‖g_t‖²`` on each row's own diagonal entry, so no row is
    drowned) - which makes the solution unique, so identical tasks get equal weights and a zero
    Gramian gives uniform weights - and then refining the chosen face's solution with the
    unregularised system (where gradients nearly cancel, the ridge can move the optimum to
    another face: then the unregularised solutions of all faces compete, or Wolfe continues
    without the ridge). The result satisfies the KKT conditions
    ``g_t·d ≥ ‖d‖²`` for every t (equality where ``w_t > 0``) to about ``1e-12 ‖g_t‖‖d‖``
    for a well-conditioned face.

    Limit: G determines ``‖g_s + g_t‖`` of nearly opposite rows only to about ``√eps`` of their
    norms, so where d is a cancellation of huge rows (``d* = 0`` from two opposite rows 1e8
    times longer than the smallest), ``‖d‖`` is small only to that resolution (``‖d‖ ≤ 1e-8
    Σ_t w_t‖g_t‖`` in the tests). With ``n > 8`` a cancellation among three or more rows far
    longer than the rest can be missed by Wolfe's method (pairs are checked explicitly).

    Returns ``w`` with ``G``'s dtype and device (computed in float64).
    """
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"G must be a non-empty square matrix [n, n], got shape {list(G.shape)}")
    if method not in ("auto", "enumerate", "wolfe"):
        raise ValueError(f"method must be 'auto', 'enumerate' or 'wolfe', got {method!r}")
    g = G.detach().to(device="cpu", dtype=torch.float64).numpy()  # the one transfer
    if not np.isfinite(g).all():  # refused, not zeroed: no method can balance it
        raise ValueError("G holds NaN or Inf (a non-finite task gradient); it cannot be balanced")
    g = 0.5 * (g + g.T)
    top = float(np.diagonal(g).max())
    w = _min_norm_host(g / top if top > 0 else g, method)
    return torch.from_numpy(w).to(device=G.device, dtype=G.dtype)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of a vector onto the probability simplex (sort-based, exact)."""
    n = v.shape[-1]
    u = torch.sort(v, descending=True).values
    css = u.cumsum(-1) - 1.0
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    cond = u - css / k > 0
    rho = cond.to(torch.int64).cumsum(-1).argmax(-1, keepdim=True)  # last True index
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def _masked_solve(G: np.ndarray, free: np.ndarray, rhs: np.ndarray, ridge: float) -> np.ndarray:
    """Solve ``(G_FF + ridge I) z_F = rhs_F`` (z = 0 off F) for each row's free set F, batched."""
    n = G.shape[0]
    M = np.where(free[:, :, None] & free[:, None, :], G, 0.0)
    diag = np.arange(n)
    M[:, diag, diag] += np.where(free, ridge, 1.0)
    z = np.linalg.solve(M, (rhs * free)[..., None])[..., 0]
    return np.where(free, z, 0.0)


def _principal_pivoting(
    G: np.ndarray, c: np.ndarray, tol: float, ridge: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """``min_{μ≥0} μᵀGμ/2 + cᵀμ`` per row of ``c`` by block principal pivoting (Júdice & Pires,
    1994; the NNLS form of Kim & Park, 2011): every KKT-infeasible variable changes side at once,
    and after three exchanges without fewer infeasible variables only the last one does (which
    terminates). All rows batched, one solve per sweep for the rows still open.

    Returns ``(μ, done)``: ``done[i]`` when row i satisfies the KKT conditions to ``tol``.
    """
    k, n = c.shape
    free = c < -tol
    mu = np.zeros((k, n))
    done = np.zeros(k, dtype=bool)
    best = np.full(k, n + 1)
    trials = np.full(k, 3)
    todo = np.arange(k)
    for _ in range(max_iter):
        f = free[todo]
        z = _masked_solve(G, f, -c[todo], ridge)
        infeasible = (f & (z < -tol)) | (~f & (z @ G + c[todo] < -tol))
        count = infeasible.sum(1)
        mu[todo] = z
        done[todo[count == 0]] = True
        open_ = count > 0
        todo, infeasible, count, f = todo[open_], infeasible[open_], count[open_], f[open_]
        if todo.size == 0:
            break
        better = count < best[todo]
        best[todo[better]] = count[better]
        trials[todo[better]] = 3
        full = better | (trials[todo] > 0)
        trials[todo[~better & full]] -= 1
        last = n - 1 - np.argmax(infeasible[:, ::-1], axis=1)
        single = np.zeros_like(infeasible)
        single[np.arange(todo.size), last] = True
        free[todo] = f ^ np.where(full[:, None], infeasible, single)
    return np.where(free, np.maximum(mu, 0.0), 0.0), done


def _lawson_hanson(
    G: np.ndarray, c: np.ndarray, tol: float, ridge: float, max_iter: int
) -> np.ndarray:
    """``min_{μ≥0} μᵀGμ/2 + cᵀμ`` per row of ``c`` by the Lawson-Hanson active-set method
    (one variable enters per outer step), batched over the rows still open."""
    k, n = c.shape
    mu = np.zeros((k, n))
    free = np.zeros((k, n), dtype=bool)
    rows = np.arange(k)
    for _ in range(max_iter):
        cand = ~free & (mu @ G + c < -tol)
        active = cand.any(1)
        if not active.any():
            break
        j = np.where(cand, mu @ G + c, np.inf).argmin(1)
        free[rows[active], j[active]] = True
        for _ in range(n + 1):
            act = np.flatnonzero(active)
            z = _masked_solve(G, free[act], -c[act], ridge)
            bad = free[act] & (z <= 0)
            need = bad.any(1)
            mu[act[~need]] = z[~need]
            if not need.any():
                break
            # Step from μ towards z until the first free variable hits zero; drop it.
            act, z, bad = act[need], z[need], bad[need]
            gap = mu[act] - z
            ratio = np.where(bad & (gap > 0), mu[act] / np.where(gap > 0, gap, 1.0), 0.0)
            alpha = np.where(bad, ratio, np.inf).min(1).clip(0.0, 1.0)
            stepped = mu[act] + alpha[:, None] * (z - mu[act])
            free[act] &= stepped > tol
            mu[act] = np.where(free[act], np.maximum(stepped, 0.0), 0.0)
            active = np.zeros(k, dtype=bool)
            active[act] = True
    return mu


def dual_cone_weights(
    G: Tensor, Y: Tensor, *, tol: float = 1e-12, max_iter: int | None = None
) -> Tensor:
    """Weights of the projections of ``Jᵀy`` (each row ``y`` of ``Y``) onto ``{x : J x ≥ 0}``.

    For each row ``y`` returns ``v = y + μ*`` with ``μ* = argmin_{μ ≥ 0} (y + μ)ᵀ G (y + μ)``, so
    that ``Jᵀv`` is the Euclidean projection of ``Jᵀy`` onto the dual cone of the rows of J
    (the dual of ``min ‖x − Jᵀy‖² s.t. J x ≥ 0``). The inner problem is the non-negative least
    squares ``min_{μ≥0} ‖Jᵀμ + Jᵀy‖²``, written with the Gramian only (``G`` is ``[n, n]``,
    float64, ideally normalised) and solved exactly, batched over the rows of ``Y`` (``[k, n]``):
    by block principal pivoting (few sweeps, each one batched solve), and by the Lawson-Hanson
    active-set method for any row that pivoting leaves open after ``max_iter`` sweeps.

    Runs in numpy on a host copy of ``G`` and ``Y`` (one transfer when they live on an
    accelerator; the systems are tiny, and per-operation overhead dominates); returns ``V`` with
    ``Y``'s device, float64.
    """
    k, n = Y.shape
    if max_iter is None:
        max_iter = 3 * n + 10
    ridge = 1e-13 * n
    g = G.detach().to("cpu", torch.float64).numpy()
    y = Y.detach().to("cpu", torch.float64).numpy()
    c = y @ g  # G y per row (G symmetric)
    mu, done = _principal_pivoting(g, c, tol, ridge, max_iter)
    if not done.all():
        mu[~done] = _lawson_hanson(g, c[~done], tol, ridge, max_iter)
    return torch.from_numpy(y + mu).to(Y.device)
