"""``synthetic-groups``: six regression tasks in two planted groups (a known task grouping).

A validation benchmark for task grouping (``taskbalance diagnose``, ``train --groups``): the
tasks ``a1, a2, a3`` share one latent factor, ``b1, b2, b3`` another, and the two group factors
point partly against each other, so tasks are related inside a group and pull a shared network
apart across groups. Built like ``synthetic-mtl`` (Ma et al., KDD 2018, section 3.2), with
its label function ``f(s) = s + Σ_i sin(α_i s + β_i)``:

1. orthonormal vectors ``u_A, u_B, v_1 … v_6 ∈ R^d`` (the seed draws them);
2. the group factors ``d_A = u_A`` and ``d_B = p·u_A + sqrt(1 - p²)·u_B`` with ``p = across``
   (default -0.5: group B negates half of group A's factor);
3. task ``t`` of group ``g``: ``w_t = c·(q·d_g + sqrt(1 - q²)·v_t)`` with ``q = within``
   (default 0.95), so ``cos(w_s, w_t) = q²`` inside a group and ``q²·p`` across;
4. ``x ~ N(0, I_d)``, ``y_t = f(w_tᵀx) + ε_t``, ``ε_t ~ N(0, σ²)``.

Default model: hard sharing (a shared ReLU layer of ``bottom_dim`` units, one tower per task;
see :func:`taskbalance.data._tabular_models.tabular_model`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from taskbalance.data.benchmark import (
    BenchmarkSpec,
    SplitArrays,
    register_benchmark,
    split_seeds,
)
from taskbalance.data.synthetic_mtl import label_function
from taskbalance.validation import check_positive, is_int, is_number

__all__ = ["GROUPS", "NAME", "TASKS", "generate_synthetic_groups", "task_weights"]

NAME = "synthetic-groups"
#: the planted grouping
GROUPS: tuple[tuple[str, ...], ...] = (("a1", "a2", "a3"), ("b1", "b2", "b3"))
TASKS: tuple[str, ...] = tuple(t for group in GROUPS for t in group)

DEFAULT_SIZE: dict[str, Any] = {
    "train": 4000,
    "val": 1000,
    "test": 1000,
    "input_dim": 32,
    "within": 0.95,
    "across": -0.5,
    "scale": 1.0,
    "num_sines": 3,
    "noise": 0.1,
}
TINY_SIZE: dict[str, Any] = {"train": 96, "val": 48, "test": 48, "input_dim": 16}
#: hard sharing with a narrow shared layer, so the groups compete for it
MODEL_DEFAULTS: dict[str, Any] = {"arch": "hard", "bottom_dim": 16}


def _check_params(params: dict[str, Any]) -> None:
    for key in ("within", "across"):
        value = params[key]
        if not is_number(value) or not -1.0 <= value <= 1.0:
            raise ValueError(f"{key} must be a number in [-1, 1] (a cosine), got {value!r}")
    d = params["input_dim"]
    directions = len(GROUPS) + len(TASKS)
    if not is_int(d) or d < directions:
        raise ValueError(
            f"input_dim must be an int >= {directions} ({directions} orthonormal directions), "
            f"got {d!r}"
        )
    m = params["num_sines"]
    if not is_int(m) or m < 0:
        raise ValueError(f"num_sines must be a non-negative int, got {m!r}")
    for key in ("scale", "noise"):
        check_positive(key, params[key], allow_zero=True)


def task_weights(seed: int, params: dict[str, Any]) -> np.ndarray:
    """The task weight vectors ``w`` (``[6, d]`` float64, rows in :data:`TASKS` order)."""
    _check_params(params)
    d = params["input_dim"]
    p, q, c = float(params["across"]), float(params["within"]), float(params["scale"])
    rng = split_seeds(seed, f"{NAME}/tasks")
    k = len(GROUPS) + len(TASKS)
    basis, r = np.linalg.qr(rng.standard_normal((d, k)))
    basis = (basis * np.sign(np.diag(r))).T  # [k, d] orthonormal rows
    u_a, u_b, own = basis[0], basis[1], basis[2:]
    factors = [u_a, p * u_a + math.sqrt(max(0.0, 1.0 - p * p)) * u_b]
    rest = math.sqrt(max(0.0, 1.0 - q * q))
    rows = []
    for g, group in enumerate(GROUPS):
        for name in group:
            rows.append(c * (q * factors[g] + rest * own[TASKS.index(name)]))
    return np.stack(rows)


def generate_synthetic_groups(seed: int, params: dict[str, Any]) -> dict[str, SplitArrays]:
    """Generate the three splits; inputs float32 ``[N, d]``, targets float32 ``[N, 1]``."""
    w = task_weights(seed, params)
    m = params["num_sines"]
    alpha = np.linspace(0.5, 2.0, m)
    beta = 2 * np.pi * np.arange(m) / max(m, 1)
    out: dict[str, SplitArrays] = {}
    for split in ("train", "val", "test"):
        rng = split_seeds(seed, f"{NAME}/{split}")
        n = params[split]
        x = rng.standard_normal((n, params["input_dim"]))
        noise = rng.standard_normal((len(TASKS), n)) * float(params["noise"])
        y = label_function(w @ x.T, alpha, beta) + noise
        out[split] = SplitArrays(
            inputs=x.astype(np.float32),
            targets={t: y[i].astype(np.float32)[:, None] for i, t in enumerate(TASKS)},
        )
    return out


def _make_tasks(params: dict[str, Any]) -> list:
    from taskbalance.tasks import regression_task

    return [regression_task(t, loss="mse") for t in TASKS]


def _make_model(params: dict[str, Any], options: dict[str, Any]) -> Any:
    from taskbalance.data._tabular_models import tabular_model

    options = {**MODEL_DEFAULTS, **options}
    return tabular_model(params["input_dim"], TASKS, options, what=f"{NAME}.build_model")


SPEC = register_benchmark(
    BenchmarkSpec(
        name=NAME,
        description=(
            "six regressions in two planted groups (a1-a3, b1-b3): related inside, "
            "partly opposed across; tabular inputs"
        ),
        version=1,
        default_size=DEFAULT_SIZE,
        tiny_size=TINY_SIZE,
        task_names=TASKS,
        generate=generate_synthetic_groups,
        make_tasks=_make_tasks,
        make_model=_make_model,
        input_shape=lambda p: (p["input_dim"],),
    )
)
