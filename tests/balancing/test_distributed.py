"""Distributed balancing on 2 gloo ranks (CPU) equals one process on the union batch.

One process group is spawned for the whole module (every method and mode runs inside it); the
reference runs here, in one process, with ``process_group=None``.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import _distributed_worker as W  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(
        W.worker,
        args=(2, _free_port(), str(out)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = 240.0  # seconds; a hang fails the test instead of blocking CI
    import time

    start = time.monotonic()
    while not ctx.join(timeout=5):
        if time.monotonic() - start > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the distributed workers did not finish (deadlock?)")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


CASES = W.cases()


@pytest.mark.parametrize("case", CASES, ids=["/".join(c) for c in CASES])
def test_two_ranks_equal_one_process_on_the_union_batch(ranks, case) -> None:
    key = "/".join(case)
    got = [r[key] for r in ranks]
    for r, g in enumerate(got):
        assert isinstance(g, torch.Tensor), f"rank {r} failed:\n{g}"
    name, mode, variant = case
    same_batch = variant if variant in ("masked", "empty") else "full"
    reference = W.run_case(name, mode, same_batch, rank=None)
    before = torch.cat([p.detach().reshape(-1) for p in W.Net().parameters()])
    moved = (reference[: before.numel()] - before).abs().max()
    assert moved > 1e-4, "the reference did not move: the comparison would be empty"
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[0], reference, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["rlw", "pcgrad", "graddrop", "gradvac"])
def test_unseeded_randomised_methods_draw_the_same_numbers_on_every_rank(ranks, name) -> None:
    got = [r[f"unseeded/{name}"] for r in ranks]
    for r, g in enumerate(got):
        assert isinstance(g, torch.Tensor), f"rank {r} failed:\n{g}"
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=0)


def test_a_nan_loss_on_one_rank_stops_every_rank_with_an_error(ranks) -> None:
    assert ranks[1]["nan_guard"].startswith("ValueError: the loss of task 'task1' is nan")
    assert ranks[0]["nan_guard"].startswith("RemoteRankError: rank(s) [1] failed")


def test_without_an_initialised_group_the_balancer_stays_in_one_process() -> None:
    from torch import nn

    import taskbalance as tb

    layer = nn.Linear(2, 2)
    assert not tb.Balancer(tb.create("ew", 2), layer.parameters()).distributed
    with pytest.raises(ValueError, match="process_group must be 'auto', None or"):
        tb.Balancer(tb.create("ew", 2), layer.parameters(), process_group="world")
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        tb.Balancer(tb.create("ew", 2), layer.parameters(), process_group=object())
