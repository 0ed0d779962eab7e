"""Shared pieces of the benchmark scripts: a T-task CNN and interleaved timing (not a test).

Timings on a busy machine are noisy: candidates are timed in interleaved rounds (noise lands on
all of them alike) and reported as the median with the spread (min-max) over rounds. On the CPU
the clock is the process's CPU time (``time.process_time``): other processes competing for the
cores then do not inflate it, only cache and frequency effects remain. On an accelerator, wall
time after a synchronisation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import taskbalance as tb


class TaskCNN(nn.Module):
    """A 3-conv shared trunk and T heads: ``"conv"`` (two convolutions, a dense output, as a
    segmentation or depth head) or ``"tiny"`` (pooling and one linear unit)."""

    def __init__(self, num_tasks: int, heads: str = "conv", width: int = 16) -> None:
        super().__init__()
        c = 2 * width
        self.shared = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(),
        )
        if heads == "conv":
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))
                for _ in range(num_tasks)
            )
        elif heads == "tiny":
            self.heads = nn.ModuleList(
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))
                for _ in range(num_tasks)
            )
        else:
            raise ValueError(f"heads must be 'conv' or 'tiny', got {heads!r}")
        self.features: torch.Tensor | None = None
        self.head_inputs: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.shared(x)
        self.features = z
        # Each head reads its own view of z: rep mode then gets every task's row in one backward.
        self.head_inputs = {f"task{t}": z.view_as(z) for t in range(len(self.heads))}
        return [h(v) for h, v in zip(self.heads, self.head_inputs.values())]


def task_losses(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """One regression loss per task, each with its own target (mean of squares, shifted)."""
    return [(out - 0.1 * t).pow(2).mean() for t, out in enumerate(outputs)]


@dataclass
class Timing:
    median: float
    low: float
    high: float

    def ratio(self, base: Timing) -> str:
        m = base.median
        return f"{self.median / m:.2f} ({self.low / m:.2f}-{self.high / m:.2f})"


def interleaved(
    steps: dict[str, Callable[[], object]],
    rounds: int,
    per_round: int,
    sync: Callable[[], None] = lambda: None,
    warmup: int = 1,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, Timing]:
    """Seconds per call of each candidate, timed in interleaved rounds: median, min and max."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            t0 = clock()
            for _ in range(per_round):
                step()
            sync()
            samples[key].append((clock() - t0) / per_round)
    return {k: Timing(statistics.median(v), min(v), max(v)) for k, v in samples.items()}


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes the CPU allocator holds while ``fn`` runs, above the level at its start.

    Read from the profiler's allocation events, each of which carries the allocator's total.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int, int]] = []

    def walk(event: object) -> None:
        if event.tag == _EventType.Allocation:  # type: ignore[attr-defined]
            fields = event.extra_fields  # type: ignore[attr-defined]
            events.append((event.start_time_ns, fields.alloc_size, fields.total_allocated))  # type: ignore[attr-defined]
        for child in event.children:  # type: ignore[attr-defined]
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():  # type: ignore[union-attr]
        walk(root)
    if not events:
        return 0
    events.sort()
    start = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - start


def one_batch(name: str, T: int) -> dict[str, object]:
    """Options of a method for one batch a step (``static`` needs its weights)."""
    options: dict[str, object] = {"weights": [1.0] * T} if name == "static" else {}
    if "sampling" in tb.method_info(name).options:
        options["sampling"] = "single"
    return options
