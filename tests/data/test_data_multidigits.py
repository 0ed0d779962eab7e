"""``multidigits``: disjoint source digits, labels, layout of the two digits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from taskbalance.data import Benchmark
from taskbalance.data.multidigits import source_digit_split


def test_source_digits_disjoint_between_splits(tiny: dict[str, Benchmark]) -> None:
    bench = tiny["multidigits"]
    used = {
        s: set(getattr(bench, s).extras["source_index"].ravel().tolist())
        for s in ("train", "val", "test")
    }
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    labels = load_digits().target
    pools = source_digit_split(0, labels)
    assert sum(len(p) for p in pools.values()) == len(labels)
    assert len(set(np.concatenate(list(pools.values())).tolist())) == len(labels)
    for split, pool in pools.items():
        assert set(np.bincount(labels[pool], minlength=10) > 0) == {True}, split
        assert used[split] <= set(pool.tolist())


def test_targets_are_the_source_labels(tiny: dict[str, Benchmark]) -> None:
    labels = load_digits().target
    ds = tiny["multidigits"].train
    ids = ds.extras["source_index"]
    assert (ds.targets["left"].numpy() == labels[ids[:, 0]]).all()
    assert (ds.targets["right"].numpy() == labels[ids[:, 1]]).all()
    assert set(ds.targets["left"].unique().tolist()) <= set(range(10))
    assert len(ds.targets["left"].unique()) >= 5


def test_left_digit_upper_left_right_digit_lower_right(tiny: dict[str, Benchmark]) -> None:
    bench = tiny["multidigits"]
    x = bench.train.inputs[:, 0].float().numpy()
    half = x.shape[-1] // 2
    mean = x.mean(0)
    # two digits on the diagonal: more ink upper-left and lower-right than on the other diagonal
    diagonal = min(mean[:half, :half].mean(), mean[half:, half:].mean())
    anti = max(mean[:half, half:].mean(), mean[half:, :half].mean())
    assert diagonal > 1.3 * anti
    # the corner only reachable by the left digit and the one only reachable by the right digit
    assert x[:, :2, -2:].sum() == 0 and x[:, -2:, :2].sum() == 0
    assert x[:, :4, :4].sum() > 0 and x[:, -4:, -4:].sum() > 0


def test_bad_geometry_rejected(tmp_path) -> None:
    from taskbalance.data import load_benchmark

    with pytest.raises(ValueError, match="image_size"):
        load_benchmark("multidigits", size={"base": "tiny", "image_size": 8}, cache_dir=tmp_path)
