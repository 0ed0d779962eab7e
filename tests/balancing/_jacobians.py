"""The hard per-task gradient matrices J the balancing tests sample (one generator each way,
shared by the test modules; imported through ``sys.path`` as ``_distributed_worker`` is)."""

from __future__ import annotations

import numpy as np

#: The named kinds of :func:`degenerate_jacobian`, in the order seeds cycle through them.
KINDS = [
    "random",
    "rank_deficient",
    "conflicting",
    "identical",
    "opposite",
    "zero_rows",
    "all_zero",
    "tiny",
    "huge",
    "mixed_scales",
]


def degenerate_jacobian(
    seed: int, *, task_counts: int = 4, row_scale: float = 6.0
) -> tuple[str, np.ndarray]:
    """``(kind, J)`` for ``seed``: kind ``KINDS[seed % 10]``, ``2`` to ``1 + task_counts`` rows,
    3 to 11 columns. ``mixed_scales`` scales each row by ``10^u``, ``u`` uniform in
    ``[-row_scale, row_scale]``; ``tiny``/``huge`` scale J by 1e-15 / 1e15."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    n = 2 + (seed // len(KINDS)) % task_counts
    P = int(rng.integers(3, 12))
    J = rng.standard_normal((n, P))
    if kind == "rank_deficient":
        J = rng.standard_normal((n, 1 + n // 2)) @ rng.standard_normal((1 + n // 2, P))
    elif kind == "conflicting":
        J[1] = -rng.uniform(0.5, 2.0) * J[0] + 0.1 * rng.standard_normal(P)
    elif kind == "identical":
        J[:] = J[0]
    elif kind == "opposite":
        J[1::2] = -J[0]
        J[0::2] = J[0]
    elif kind == "zero_rows":
        J[rng.integers(0, n)] = 0.0
        J[0] = 0.0
    elif kind == "all_zero":
        J[:] = 0.0
    elif kind == "tiny":
        J *= 1e-15
    elif kind == "huge":
        J *= 1e15
    elif kind == "mixed_scales":
        J *= 10.0 ** rng.uniform(-row_scale, row_scale, size=(n, 1))
    return kind, J


def scaled_jacobian(rng: np.random.Generator, k: int) -> np.ndarray:
    """Random, rank-deficient, conflicting, colinear (both signs), identical, opposite, zero
    rows and per-row scales (kind ``k % 8``), 2 to 6 rows, 1 to 50 columns, times a global
    scale from 1e-15 to 1e15."""
    n = int(rng.integers(2, 7))
    P = int(rng.integers(1, 51))
    J = rng.standard_normal((n, P))
    kind = k % 8
    if kind == 1:  # rank deficient
        r = int(rng.integers(1, n))
        J = rng.standard_normal((n, r)) @ rng.standard_normal((r, P))
    elif kind == 2:  # conflicting
        J[1] = -J[0] + 0.1 * rng.standard_normal(P)
    elif kind == 3:  # colinear, both signs
        J = rng.standard_normal(n)[:, None] * rng.standard_normal(P)[None, :]
    elif kind == 4:  # identical rows
        J[1:] = J[0]
    elif kind == 5:  # opposite rows
        J[1] = -J[0]
    elif kind == 6:  # zero rows
        J[: int(rng.integers(1, n + 1))] = 0.0
    elif kind == 7:  # per-row scales
        J *= 10.0 ** rng.uniform(-15, 15, size=(n, 1))
    return J * 10.0 ** rng.uniform(-15, 15)
