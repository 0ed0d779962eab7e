"""Worker of the distributed metric test: each rank evaluates its shard, then reduces."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from taskbalance.tasks.metrics import (
    Accuracy,
    DepthErrors,
    EventSpotting,
    NormalErrors,
    RegressionErrors,
    SegmentationMetrics,
)
from taskbalance.training.distributed import reduce_metric, shard_indices

N = 13  # samples: rank 0 gets 7, rank 1 gets 6


def data() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per metric: predictions, targets, label mask over N samples (some unlabelled)."""
    g = torch.Generator().manual_seed(7)
    mask = torch.rand(N, generator=g) > 0.2
    seg_t = torch.randint(0, 3, (N, 4, 4), generator=g)
    seg_t[0, 0, 0] = 255  # ignored pixel
    depth_t = torch.rand(N, 1, 4, 4, generator=g) + 0.1
    depth_t[1, 0, 0, 0] = 0  # invalid pixel
    return {
        "accuracy": (torch.randn(N, 4, generator=g), torch.randint(0, 4, (N,), generator=g), mask),
        "regression": (torch.randn(N, 2, generator=g), torch.randn(N, 2, generator=g), mask),
        "segmentation": (torch.randn(N, 3, 4, 4, generator=g), seg_t, mask),
        "depth": (torch.rand(N, 1, 4, 4, generator=g), depth_t, mask),
        "normals": (
            torch.randn(N, 3, 4, 4, generator=g),
            torch.randn(N, 3, 4, 4, generator=g),
            mask,
        ),
        "normals_exact": (
            torch.randn(N, 3, 4, 4, generator=g),
            torch.randn(N, 3, 4, 4, generator=g),
            mask,
        ),
        "events": (torch.randn(N, 3, generator=g), torch.randint(0, 3, (N,), generator=g), mask),
    }


def metrics() -> dict[str, object]:
    return {
        "accuracy": Accuracy(4),
        "regression": RegressionErrors(),
        "segmentation": SegmentationMetrics(3),
        "depth": DepthErrors(),
        "normals": NormalErrors(bin_width=0.5),
        "normals_exact": NormalErrors(exact_median=True),
        "events": EventSpotting(3, background_class=0),
    }


def evaluate(rank: int | None, world: int) -> dict[str, dict[str, float]]:
    out = {}
    batches = data()
    for name, metric in metrics().items():
        pred, target, mask = batches[name]
        idx = list(range(N)) if rank is None else shard_indices(N, rank, world)
        for start in range(0, len(idx), 3):  # batches of 3 on each rank
            sel = idx[start : start + 3]
            metric.update(pred[sel], target[sel], mask[sel])  # type: ignore[attr-defined]
        if rank is not None:
            reduce_metric(metric)  # type: ignore[arg-type]
        out[name] = metric.compute()  # type: ignore[attr-defined]
    return out


def worker(rank: int, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        result: object = evaluate(rank, world)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result = repr(exc)
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    dist.destroy_process_group()
