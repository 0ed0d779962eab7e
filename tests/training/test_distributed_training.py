"""Distributed training helpers: exact metric reduction over 2 gloo ranks, union-batch sampler."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from taskbalance.training.distributed import UnionBatchSampler, shard_indices

sys.path.insert(0, os.path.dirname(__file__))
import _metric_worker as W  # noqa: E402


def test_union_batches_are_the_batches_of_one_process_with_r_times_the_batch() -> None:
    size, world, local = 23, 3, 2
    for epoch in (0, 1):
        samplers = [UnionBatchSampler(size, r, world, seed=5) for r in range(world)]
        for s in samplers:
            s.set_epoch(epoch)
        order = samplers[0].permutation().tolist()
        per_rank = [list(s) for s in samplers]
        assert sorted(i for part in per_rank for i in part) == list(range(size))  # each once
        steps = max(len(p) for p in per_rank)
        for k in range(0, steps, local):
            union = {i for p in per_rank for i in p[k : k + local]}
            one_process = set(order[k * world : (k + local) * world])
            assert union == one_process
    a, b = UnionBatchSampler(size, 0, 1, seed=5), UnionBatchSampler(size, 0, 1, seed=5)
    b.set_epoch(1)
    assert list(a) != list(b)  # a new order every epoch
    assert [len(UnionBatchSampler(size, r, world, seed=0)) for r in range(world)] == [8, 8, 7]


def test_shard_indices_cover_every_sample_once() -> None:
    parts = [shard_indices(10, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))
    with pytest.raises(ValueError, match="rank must be in"):
        shard_indices(10, 3, 3)


def test_metrics_reduced_over_two_ranks_equal_one_process_on_all_samples(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(
        W.worker, args=(2, port, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    import time

    start = time.monotonic()
    while not ctx.join(timeout=5):
        if time.monotonic() - start > 120:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the metric workers did not finish")
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    reference = W.evaluate(None, 1)
    for r, g in enumerate(got):
        assert isinstance(g, dict), f"rank {r} failed: {g}"
        assert g.keys() == reference.keys()
        for name in reference:
            # float32 errors summed in another order: agreement to float32 rounding
            assert g[name] == pytest.approx(reference[name], rel=1e-6, abs=1e-9), name
    # the shards alone would differ: the reduction is not a no-op
    alone = {}
    for name, metric in W.metrics().items():
        pred, target, mask = W.data()[name]
        idx = shard_indices(W.N, 0, 2)
        metric.update(pred[idx], target[idx], mask[idx])  # type: ignore[attr-defined]
        alone[name] = metric.compute()  # type: ignore[attr-defined]
    assert any(alone[n] != pytest.approx(reference[n], rel=1e-9) for n in reference)


def test_union_batches_are_consecutive_runs_of_one_order_whatever_the_number_of_ranks() -> None:
    from taskbalance.training.distributed import UnionBatches

    size, batch = 23, 7
    reference = UnionBatchSampler(size, 0, 1, seed=3)
    for epoch in (0, 2):
        reference.set_epoch(epoch)
        order = reference.permutation().tolist()
        want = [set(order[k * batch : (k + 1) * batch]) for k in range(size // batch)]
        for world in (1, 2, 3):
            ranks = [UnionBatches(size, batch, r, world, seed=3) for r in range(world)]
            for s in ranks:
                s.set_epoch(epoch)
            local = [list(s) for s in ranks]
            assert all(len(parts) == 3 for parts in local)  # 2 samples left out of the epoch
            for k in range(3):
                sizes = [len(parts[k]) for parts in local]
                assert max(sizes) - min(sizes) <= 1
                assert set().union(*(parts[k] for parts in local)) == want[k]
    with pytest.raises(ValueError, match="smaller than the 3 ranks"):
        UnionBatches(size, 2, 0, 3, seed=0)
    with pytest.raises(ValueError, match="larger than the 23 training samples"):
        UnionBatches(size, 24, 0, 1, seed=0)
