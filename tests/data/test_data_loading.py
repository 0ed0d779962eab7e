"""Batch-level loading gives exactly the batches of per-sample loading, in the same order."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from taskbalance.data import MultiTaskDataset
from taskbalance.data.loading import batch_indexable, batch_loader, loader_batch_size
from taskbalance.training import make_loaders


def _dataset(n: int = 23) -> MultiTaskDataset:
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 256, (n, 1, 3, 3), dtype=torch.uint8, generator=g)
    targets = {"a": torch.arange(n), "b": torch.randn(n, 2, generator=g)}
    masks = {"b": torch.arange(n) % 3 != 0}
    return MultiTaskDataset(inputs, targets, masks)


def _same(batch_a, batch_b) -> None:
    xa, ta, ma = batch_a
    xb, tb, mb = batch_b
    assert xa.dtype == xb.dtype == torch.float32 and torch.equal(xa, xb)
    assert ta.keys() == tb.keys() and ma.keys() == mb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]) and torch.equal(ma[k], mb[k])


def test_shuffled_batches_and_generator_state_match_per_sample_loading() -> None:
    data = _dataset()
    assert batch_indexable(data)
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    new = batch_loader(data, 4, shuffle=True, generator=g_new, drop_last=True)
    old = DataLoader(data, batch_size=4, shuffle=True, generator=g_old, drop_last=True)
    assert len(new) == len(old) == 5 and loader_batch_size(new) == 4
    for _ in range(2):  # two epochs: the generator advances identically
        pairs = list(zip(new, old, strict=True))
        for a, b in pairs:
            _same(a, b)
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_run_loaders_are_batch_level_and_ordered_for_evaluation() -> None:
    data = _dataset()
    train, val, _ = make_loaders(data, data, None, batch_size=8, eval_batch_size=5)
    assert train.batch_size is None  # whole batches come from the dataset
    ordered = list(val)  # type: ignore[arg-type]
    assert [len(b[0]) for b in ordered] == [5, 5, 5, 5, 3]
    for got, want in zip(ordered, DataLoader(data, batch_size=5), strict=True):
        _same(got, want)
