"""``synthetic-mtl``: the MMoE paper's construction, label correlation, determinism, models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from taskbalance.data import available_benchmarks, load_benchmark
from taskbalance.data.benchmark import get_spec
from taskbalance.data.synthetic_mtl import VARIANTS, label_correlation, task_parameters


def _gate_linear(model: nn.Module) -> nn.Linear:
    """The linear layer of task y1's gate in an MMoE model."""
    gates = model.gates
    assert isinstance(gates, nn.ModuleDict)
    linear = gates["y1"].linear
    assert isinstance(linear, nn.Linear)
    return linear


def params(**overrides) -> dict:
    return get_spec("synthetic-mtl").resolve_size(overrides)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9, 1.0, -0.4])
def test_task_weights_have_the_requested_cosine_and_scale(p: float) -> None:
    tp = task_parameters(7, params(correlation=p, scale=2.0))
    u, w = tp["u"], tp["w"]
    np.testing.assert_allclose(u @ u.T, np.eye(2), atol=1e-12)  # orthonormal pair
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), [2.0, 2.0], rtol=1e-12)
    cos = float(w[0] @ w[1] / np.linalg.norm(w[0]) / np.linalg.norm(w[1]))
    assert cos == pytest.approx(p, abs=1e-12)
    other = task_parameters(7, params(correlation=0.2, scale=2.0))
    np.testing.assert_array_equal(other["u"], u)  # the knob changes w2 only
    np.testing.assert_array_equal(other["alpha"], tp["alpha"])
    # the sines are fixed: the label correlation of a given p does not depend on the seed
    np.testing.assert_array_equal(task_parameters(8, params())["beta"], tp["beta"])


def test_closed_form_label_correlation_matches_monte_carlo() -> None:
    """label_correlation against a numpy Monte Carlo estimate with its own sampling."""
    rng = np.random.default_rng(123)
    alpha, beta = rng.standard_normal(10), rng.standard_normal(10)
    n = 100_000
    for p in (0.0, 0.5, 0.9):
        z = rng.standard_normal((2, n))
        s = np.stack([z[0], p * z[0] + np.sqrt(1 - p * p) * z[1]])  # (w1ᵀx, w2ᵀx), c = 1
        y = s + np.sin(alpha[:, None, None] * s[None] + beta[:, None, None]).sum(0)
        y += 0.1 * rng.standard_normal(y.shape)
        empirical = np.corrcoef(y)[0, 1]
        assert label_correlation(p, alpha, beta, noise=0.1) == pytest.approx(empirical, abs=0.015)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_generated_labels_have_the_known_correlation(p: float, tmp_path: Path) -> None:
    size = {"train": 20_000, "val": 8, "test": 8, "input_dim": 20, "correlation": p}
    bench = load_benchmark("synthetic-mtl", seed=2, size=size, cache_dir=tmp_path)
    y1 = bench.train.targets["y1"].double().numpy()[:, 0]
    y2 = bench.train.targets["y2"].double().numpy()[:, 0]
    tp = task_parameters(2, bench.params)
    expected = label_correlation(p, tp["alpha"], tp["beta"], scale=1.0, noise=0.1)
    # sampling sd of a correlation estimate over 20k samples is below 0.007
    assert np.corrcoef(y1, y2)[0, 1] == pytest.approx(expected, abs=0.025)
    # and the labels follow the construction: y_t = s_t + Σ sin(α s_t + β) + ε, ε ~ N(0, 0.1²)
    x = bench.train.inputs.double().numpy()
    s = tp["w"] @ x.T
    clean = s + np.sin(tp["alpha"][:, None, None] * s[None] + tp["beta"][:, None, None]).sum(0)
    residual = np.stack([y1, y2]) - clean
    assert abs(residual.mean()) < 0.005 and residual.std() == pytest.approx(0.1, rel=0.03)


def test_linear_part_only_correlation_equals_the_knob(tmp_path: Path) -> None:
    size = {"train": 20_000, "val": 8, "test": 8, "num_sines": 0, "noise": 0.0}
    for p in (0.25, 0.75):
        bench = load_benchmark("synthetic-mtl", size={**size, "correlation": p}, cache_dir=tmp_path)
        y = torch.cat([bench.train.targets["y1"], bench.train.targets["y2"]], 1).double().numpy()
        assert np.corrcoef(y.T)[0, 1] == pytest.approx(p, abs=0.02)


def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    a = load_benchmark("synthetic-mtl", size="tiny", seed=4, cache_dir=tmp_path / "a")
    b = load_benchmark("synthetic-mtl", size="tiny", seed=4, cache_dir=tmp_path / "b")
    for split in ("train", "val", "test"):
        da, db = getattr(a, split), getattr(b, split)
        assert torch.equal(da.inputs, db.inputs)
        assert all(torch.equal(da.targets[t], db.targets[t]) for t in ("y1", "y2"))
    c = load_benchmark("synthetic-mtl", size="tiny", seed=5, cache_dir=tmp_path / "a")
    assert not torch.equal(a.train.inputs, c.train.inputs)
    # another correlation, same seed: same inputs and y1, different y2
    d = load_benchmark("synthetic-mtl-0.9", size="tiny", seed=4, cache_dir=tmp_path / "a")
    assert torch.equal(a.test.inputs, d.test.inputs)
    assert torch.equal(a.test.targets["y1"], d.test.targets["y1"])
    assert not torch.equal(a.test.targets["y2"], d.test.targets["y2"])
    assert not (a.train.inputs[:, None] == a.val.inputs[None]).all(-1).any()  # disjoint splits


def test_registered_names_items_and_models(tmp_path: Path) -> None:
    assert set(VARIANTS) <= set(available_benchmarks())
    for name, p in VARIANTS.items():
        assert get_spec(name).resolve_size("default")["correlation"] == p
    bench = load_benchmark("synthetic-mtl-1.0", size="tiny", cache_dir=tmp_path)
    x, targets, masks = bench.train[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == bench.input_shape == (16,)
    assert {t: tuple(v.shape) for t, v in targets.items()} == {"y1": (1,), "y2": (1,)}
    # correlation 1: the two tasks differ by the noise only
    diff = bench.train.targets["y1"] - bench.train.targets["y2"]
    assert float(diff.std()) == pytest.approx(0.1 * 2**0.5, rel=0.3)
    assert [t.name for t in bench.tasks] == ["y1", "y2"]
    assert _gate_linear(bench.build_model()).bias is not None  # gate_bias=True default
    assert _gate_linear(bench.build_model(gate_bias=False)).bias is None
    for arch in ("mmoe", "hard", "cgc", "ple", "dselect_k", "ltb"):
        out = bench.build_model(arch=arch)(bench.train.inputs[:4])
        assert {t: tuple(v.shape) for t, v in out.items()} == {"y1": (4, 1), "y2": (4, 1)}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda d: load_benchmark("synthetic-mtl", size={"correlation": 1.5}, cache_dir=d),
            r"correlation must be a number in \[-1, 1\]",
        ),
        (lambda d: load_benchmark("synthetic-mtl", size={"input_dim": 1}, cache_dir=d), "input"),
        (
            lambda d: load_benchmark("synthetic-mtl", size="tiny", cache_dir=d).build_model(
                arch="moe"
            ),
            "unknown arch",
        ),
        (
            lambda d: load_benchmark("synthetic-mtl", size="tiny", cache_dir=d).build_model(
                experts=3
            ),
            "experts",
        ),
    ],
)
def test_bad_options_are_named(call, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


@pytest.mark.parametrize("key", ["scale", "noise"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5])
def test_scale_and_noise_must_be_finite_and_non_negative(
    key: str, value: float, tmp_path: Path
) -> None:
    # A NaN or infinite noise would generate NaN labels and fail much later, in training.
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number >= 0, got {value!r}$"):
        load_benchmark("synthetic-mtl", size={key: value}, cache_dir=tmp_path)


def test_cli_trains_a_named_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from taskbalance.cli import main

    monkeypatch.setenv("TASKBALANCE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["train", "--benchmark", "synthetic-mtl-0.0", "--size", "tiny", "--epochs", "1"]
    assert main([*argv, "--steps", "2", "--method", "mgda", "--out", str(out)]) == 0
    assert (out / "results.json").is_file()
