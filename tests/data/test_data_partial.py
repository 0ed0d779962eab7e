"""Partial labels: fractions, partly overlapping subsets, full val/test, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from taskbalance.data import Benchmark, apply_partial_labels, labelled_subset, load_benchmark


@pytest.fixture(scope="module")
def partial(data_cache: Path) -> Benchmark:
    return load_benchmark(
        "scenes", size="tiny", cache_dir=data_cache, labels={"depth": 0.25, "normals": 0.5}
    )


def test_fractions_respected(partial: Benchmark) -> None:
    n = len(partial.train)
    fractions = partial.train.label_fractions()
    assert fractions["segmentation"] == 1.0
    assert int(partial.train.masks["depth"].sum()) == round(0.25 * n)
    assert int(partial.train.masks["normals"].sum()) == round(0.5 * n)


def test_val_and_test_fully_labelled(partial: Benchmark) -> None:
    for split in (partial.val, partial.test):
        assert all(v == 1.0 for v in split.label_fractions().values())


def test_subsets_overlap_partly(partial: Benchmark) -> None:
    depth, normals = partial.train.masks["depth"], partial.train.masks["normals"]
    both = int((depth & normals).sum())
    assert 0 < both < int(depth.sum())
    # independent draws: different tasks, same fraction -> different subsets
    n = 200
    a, b = labelled_subset(n, 0.5, 0, "a"), labelled_subset(n, 0.5, 0, "b")
    overlap = int((a & b).sum())
    assert 30 < overlap < 70  # about 0.5 * 0.5 * 200 = 50


def test_unlabelled_targets_are_zero_placeholders(partial: Benchmark, tiny) -> None:
    ds = partial.train
    missing = ~ds.masks["depth"]
    assert missing.any()
    assert (ds.targets["depth"][missing] == 0).all()
    full = tiny["scenes"].train
    assert torch.equal(ds.targets["depth"][~missing], full.targets["depth"][~missing])
    assert torch.equal(ds.inputs, full.inputs)
    index = int(missing.nonzero()[0])
    _, targets, masks = ds[index]
    assert not bool(masks["depth"]) and bool(masks["segmentation"])
    assert targets["depth"].shape == full[index][1]["depth"].shape
    x, targets, masks = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert torch.equal(masks["depth"], ds.masks["depth"])


def test_subsets_nested_and_independent_of_other_tasks() -> None:
    small, large = labelled_subset(100, 0.1, 3, "depth"), labelled_subset(100, 0.3, 3, "depth")
    assert (small <= large).all() and small.sum() == 10 and large.sum() == 30
    assert not (labelled_subset(100, 0.3, 4, "depth") == large).all()
    assert labelled_subset(7, 0.01, 0, "x").sum() == 1  # at least one sample keeps its label


def test_apply_twice_only_removes(tiny) -> None:
    ds = tiny["multidigits"].train
    once = apply_partial_labels(ds, {"left": 0.5}, seed=1)
    twice = apply_partial_labels(once, {"left": 0.5}, seed=2)
    assert (twice.masks["left"] <= once.masks["left"]).all()
    assert apply_partial_labels(ds, {"left": 1.0}).label_fractions()["left"] == 1.0


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, math.nan, math.inf, "half", True, None])
def test_bad_fraction_names_the_task(bad, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="depth"):
        load_benchmark("scenes", size="tiny", cache_dir=tmp_path, labels={"depth": bad})


def test_unknown_task_named(tiny) -> None:
    with pytest.raises(ValueError, match="'dpeth'.*segmentation"):
        apply_partial_labels(tiny["scenes"].train, {"dpeth": 0.5})
