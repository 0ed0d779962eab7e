"""``synthetic-groups``: the planted task weights, the labels' construction, the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taskbalance.data import load_benchmark
from taskbalance.data.benchmark import get_spec
from taskbalance.data.synthetic_groups import GROUPS, TASKS, task_weights


def params(**overrides) -> dict:
    return get_spec("synthetic-groups").resolve_size(overrides)


@pytest.mark.parametrize(("within", "across"), [(0.95, -0.5), (0.6, 0.3), (1.0, -1.0)])
def test_task_weights_have_the_planted_cosines(within: float, across: float) -> None:
    w = task_weights(3, params(within=within, across=across, scale=2.0))
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 2.0, rtol=1e-12)
    cos = (w @ w.T) / 4.0
    for g, group in enumerate(GROUPS):
        for h, other in enumerate(GROUPS):
            for s in group:
                for t in other:
                    if s == t:
                        continue
                    # inside a group q²; across q²·p (the factors' cosine is p)
                    want = within**2 if g == h else within**2 * across
                    assert cos[TASKS.index(s), TASKS.index(t)] == pytest.approx(want, abs=1e-12)


def test_labels_follow_the_construction(tmp_path: Path) -> None:
    size = {"train": 64, "val": 8, "test": 8, "noise": 0.0, "num_sines": 2}
    bench = load_benchmark("synthetic-groups", seed=1, size=size, cache_dir=tmp_path)
    w = task_weights(1, bench.params)
    x = bench.train.inputs.double().numpy()
    alpha, beta = np.array([0.5, 2.0]), np.array([0.0, np.pi])
    for i, t in enumerate(TASKS):
        s = x @ w[i]
        want = s + np.sin(alpha[0] * s + beta[0]) + np.sin(alpha[1] * s + beta[1])
        got = bench.train.targets[t].double().numpy()[:, 0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_same_seed_same_data_and_default_model_is_hard_sharing(tmp_path: Path) -> None:
    a = load_benchmark("synthetic-groups", seed=2, size="tiny", cache_dir=tmp_path / "a")
    b = load_benchmark("synthetic-groups", seed=2, size="tiny", cache_dir=tmp_path / "b")
    np.testing.assert_array_equal(a.test.inputs.numpy(), b.test.inputs.numpy())
    model = a.build_model()
    assert list(model.task_names) == list(TASKS)
    out = model(a.train.inputs[:5])
    assert {t: tuple(v.shape) for t, v in out.items()} == {t: (5, 1) for t in TASKS}


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("within", 1.5, "within must be"), ("across", "x", "across must be"),
     ("input_dim", 4, "input_dim must be an int >= 8")],
)  # fmt: skip
def test_bad_options_are_named(key: str, value: object, match: str) -> None:
    p = params()
    p[key] = value
    with pytest.raises(ValueError, match=match):
        task_weights(0, p)
