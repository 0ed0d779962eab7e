"""``synthetic-mtl``: two regression tasks with a tunable task correlation (tabular inputs).

The synthetic study of Ma et al., "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts" (KDD 2018, section 3.2), where MMoE's gain over a shared bottom
grows as the tasks become less related:

1. two orthonormal vectors ``u_1, u_2 ∈ R^d``;
2. the task weights ``w_1 = c·u_1`` and ``w_2 = c·(p·u_1 + sqrt(1 - p²)·u_2)``, so that
   ``cos(w_1, w_2) = p``, the *task correlation* (option ``correlation``);
3. inputs ``x ~ N(0, I_d)``;
4. labels ``y_t = w_tᵀx + Σ_{i=1}^{m} sin(α_i·w_tᵀx + β_i) + ε_t``, ``ε_t ~ N(0, σ²)``.

The paper uses d = 100, c = 1, m = 10 and ``ε ~ N(0, 0.01)`` (variance 0.01, ``noise=0.1``). It
does not give the sine parameters; here they are fixed, ``α_i`` evenly spaced in [0.5, 2] and
``β_i = 2π(i-1)/m``, the same for both tasks (only ``w_t`` differs, as in the paper) and for every
seed, so a correlation gives the same label correlation whatever the seed (with random ``α``
the label correlation at p = 0.5 ranged over 0.15-0.38 between seeds; ``α`` up to 10, as one
public generator uses, was not learnable from 8,000 samples by either model). The seed draws
``u_1, u_2`` and the inputs, not ``correlation``: two correlations with one seed differ in
``w_2`` and the ``y2`` labels alone.

The Pearson correlation of the two labels is a monotone function of ``p`` but not ``p`` itself
(the sines bend it); :func:`label_correlation` gives it in closed form (Gaussian identities
``E cos(Z + k) = cos(k)·exp(-Var Z / 2)`` and Stein's lemma), which the tests compare with the
generated data. With the default options: p = 0 → 0.00, 0.5 → 0.15, 0.9 → 0.68, 1 → 0.995.

Registered names: ``synthetic-mtl`` (correlation 0.5, the paper's lowest; set it with
``size={"correlation": 0.2}`` or ``size: {correlation: 0.2}`` in a train config) and
``synthetic-mtl-0.0``, ``synthetic-mtl-0.5``, ``synthetic-mtl-0.9``, ``synthetic-mtl-1.0`` for
the command line. Default model: :class:`~taskbalance.models.MMoE` (8 experts of 16 ReLU units,
towers of 8); ``build_model(arch=...)`` gives the other architectures (see
:func:`taskbalance.data._tabular_models.tabular_model`).
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
from taskbalance.validation import check_positive, is_int, is_number

__all__ = [
    "NAME",
    "TASKS",
    "VARIANTS",
    "generate_synthetic_mtl",
    "label_correlation",
    "label_function",
    "task_parameters",
]

NAME = "synthetic-mtl"
TASKS = ("y1", "y2")
#: correlation of each registered name
VARIANTS: dict[str, float] = {
    NAME: 0.5,
    f"{NAME}-0.0": 0.0,
    f"{NAME}-0.5": 0.5,
    f"{NAME}-0.9": 0.9,
    f"{NAME}-1.0": 1.0,
}

DEFAULT_SIZE: dict[str, Any] = {
    "train": 8000,
    "val": 2000,
    "test": 2000,
    "input_dim": 100,
    "correlation": 0.5,
    "scale": 1.0,
    "num_sines": 10,
    "noise": 0.1,
}
TINY_SIZE: dict[str, Any] = {"train": 96, "val": 48, "test": 48, "input_dim": 16}


def _check_params(params: dict[str, Any]) -> None:
    p = params["correlation"]
    if not is_number(p) or not -1.0 <= p <= 1.0:
        raise ValueError(f"correlation must be a number in [-1, 1] (cos(w1, w2)), got {p!r}")
    d = params["input_dim"]
    if not is_int(d) or d < 2:
        raise ValueError(f"input_dim must be an int >= 2 (two orthogonal vectors), got {d!r}")
    m = params["num_sines"]
    if not is_int(m) or m < 0:
        raise ValueError(f"num_sines must be a non-negative int, got {m!r}")
    for key in ("scale", "noise"):
        check_positive(key, params[key], allow_zero=True)  # NaN/inf would make NaN labels


def task_parameters(seed: int, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The generating parameters for ``seed``: ``u`` (``[2, d]``, orthonormal rows), ``w``
    (``[2, d]``, the task weights), ``alpha`` and ``beta`` (``[m]``), all float64."""
    _check_params(params)
    d, m = params["input_dim"], params["num_sines"]
    p, c = float(params["correlation"]), float(params["scale"])
    rng = split_seeds(seed, f"{NAME}/tasks")
    q, r = np.linalg.qr(rng.standard_normal((d, 2)))
    u = (q * np.sign(np.diag(r))).T  # sign fix: a unique orthonormal pair per draw
    alpha = np.linspace(0.5, 2.0, m)
    beta = 2 * np.pi * np.arange(m) / max(m, 1)
    w = np.stack([c * u[0], c * (p * u[0] + math.sqrt(max(0.0, 1.0 - p * p)) * u[1])])
    return {"u": u, "w": w, "alpha": alpha, "beta": beta}


def label_function(s: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``s + Σ_i sin(α_i s + β_i)`` for projections ``s`` of any shape (float64)."""
    out = s.copy()
    for a, b in zip(alpha, beta, strict=True):
        out += np.sin(a * s + b)
    return out


def generate_synthetic_mtl(seed: int, params: dict[str, Any]) -> dict[str, SplitArrays]:
    """Generate the three splits (see the module docstring); inputs float32 ``[N, d]``,
    targets float32 ``[N, 1]`` per task."""
    tp = task_parameters(seed, params)
    out: dict[str, SplitArrays] = {}
    for split in ("train", "val", "test"):
        rng = split_seeds(seed, f"{NAME}/{split}")
        n = params[split]
        x = rng.standard_normal((n, params["input_dim"]))
        noise = rng.standard_normal((2, n)) * float(params["noise"])
        s = tp["w"] @ x.T  # [2, n]
        y = label_function(s, tp["alpha"], tp["beta"]) + noise
        out[split] = SplitArrays(
            inputs=x.astype(np.float32),
            targets={t: y[i].astype(np.float32)[:, None] for i, t in enumerate(TASKS)},
        )
    return out


def label_correlation(
    correlation: float,
    alpha: np.ndarray,
    beta: np.ndarray,
    *,
    scale: float = 1.0,
    noise: float = 0.1,
) -> float:
    """Pearson correlation of ``y1`` and ``y2`` in the population, in closed form.

    With ``s_t = w_tᵀx`` jointly Gaussian (variance c², covariance c²p), ``f(s) = s +
    Σ sin(α_i s + β_i)``: ``Cov(s_1, sin(α s_2 + β)) = c²p·α·cos β·e^{-α²c²/2}`` (Stein's lemma)
    and ``E[sin(a s_1 + b) sin(a' s_2 + b')] = ½(E cos(a s_1 - a' s_2 + b - b') -
    E cos(a s_1 + a' s_2 + b + b'))`` with ``E cos(Z + k) = cos k·e^{-Var Z/2}``.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    c2 = float(scale) ** 2

    def cov(rho: float) -> float:
        lin = c2 * rho
        cross = 2.0 * np.sum(c2 * rho * alpha * np.cos(beta) * np.exp(-(alpha**2) * c2 / 2))
        a, a2 = alpha[:, None], alpha[None, :]
        b, b2 = beta[:, None], beta[None, :]
        var_minus = c2 * (a**2 + a2**2 - 2 * a * a2 * rho)
        var_plus = c2 * (a**2 + a2**2 + 2 * a * a2 * rho)
        e_prod = 0.5 * (
            np.cos(b - b2) * np.exp(-var_minus / 2) - np.cos(b + b2) * np.exp(-var_plus / 2)
        )
        means = np.sin(beta) * np.exp(-(alpha**2) * c2 / 2)
        sines = float(np.sum(e_prod - means[:, None] * means[None, :]))
        return float(lin + cross + sines)

    variance = cov(1.0) + float(noise) ** 2
    return cov(float(correlation)) / variance


def _make_tasks(params: dict[str, Any]) -> list:
    from taskbalance.tasks import regression_task

    return [regression_task(t, loss="mse") for t in TASKS]


def _make_model(params: dict[str, Any], options: dict[str, Any]) -> Any:
    from taskbalance.data._tabular_models import tabular_model

    return tabular_model(params["input_dim"], TASKS, options, what=f"{NAME}.build_model")


def _register(name: str, correlation: float) -> BenchmarkSpec:
    return register_benchmark(
        BenchmarkSpec(
            name=name,
            description=(
                "MMoE-paper synthetic regression, two tasks of controlled correlation "
                f"(default {correlation:g}); tabular inputs"
            ),
            version=2,
            default_size={**DEFAULT_SIZE, "correlation": correlation},
            tiny_size=TINY_SIZE,
            task_names=TASKS,
            generate=generate_synthetic_mtl,
            make_tasks=_make_tasks,
            make_model=_make_model,
            input_shape=lambda p: (p["input_dim"],),
        )
    )


SPECS = {name: _register(name, p) for name, p in VARIANTS.items()}
