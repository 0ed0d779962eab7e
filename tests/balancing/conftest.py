"""Fixtures of the balancing tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by the CPU allocator while ``fn`` runs, above the level at its start.

    Read from the profiler's allocation events (each carries the allocator's running total).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []

    def walk(event):
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            allocations.append((event.start_time_ns, fields.alloc_size, fields.total_allocated))
        for child in event.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    allocations.sort()
    assert allocations, "the profiler recorded no allocation"
    start = allocations[0][2] - allocations[0][1]
    return max(total for _, _, total in allocations) - start


@pytest.fixture
def peak_memory() -> Callable[[Callable[[], object]], int]:
    """``peak_memory(fn)``: peak CPU bytes allocated while ``fn`` runs (see peak_cpu_bytes)."""
    return peak_cpu_bytes


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
