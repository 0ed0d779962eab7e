"""Shared pieces of the benchmark scripts: a T-task CNN and interleaved timing (not a test).

Timings on a busy machine are noisy: candidates are timed in interleaved rounds (noise lands on
all of them alike) and reported as the median with the spread (min-max) over rounds. On the CPU
the clock is the process's CPU time (``time.process_time``): other processes competing for the
cores then do not inflate it, only cache and frequency effects remain. On an accelerator, wall
time after a synchronisation.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import taskbalance as tb


class BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with batch norm, added to a shortcut (a
    strided 1x1 convolution where the shape changes), then a ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


def deep_trunk(width: int = 16, blocks: int = 3) -> nn.Sequential:
    """A ResNet-20-like trunk (He et al. 2016, CIFAR): a stem convolution, then three stages of
    ``blocks`` basic blocks at ``width``, 2x and 4x channels, each later stage at half the
    resolution. Its last convolution (the default last shared layer) is one of 19 alike."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=False)]
    layers += [nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage in range(3):
        cout = width * 2**stage
        for b in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
            cin = cout
    return nn.Sequential(*layers)


class TaskCNN(nn.Module):
    """A shared trunk and T heads: ``"conv"`` (two convolutions, a dense output, as a
    segmentation or depth head) or ``"tiny"`` (pooling and one linear unit).

    ``trunk``: ``"small"`` (3 convolutions; the last is a third of the trunk's work) or
    ``"deep"`` (:func:`deep_trunk`: 19 convolutions; the last is about 1/19 of it)."""

    def __init__(
        self, num_tasks: int, heads: str = "conv", width: int = 16, trunk: str = "small"
    ) -> None:
        super().__init__()
        if trunk == "small":
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
        elif trunk == "deep":
            c = 4 * width
            self.shared = deep_trunk(width)
        else:
            raise ValueError(f"trunk must be 'small' or 'deep', got {trunk!r}")
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


def gradnorm_flop_bound(model: TaskCNN, x: torch.Tensor) -> tuple[float, float, float]:
    """``(ew, extra, bound)``: multiply-adds of an ``ew`` step (forward, and the backward's input
    and weight gradients of every convolution and linear layer), the extra multiply-adds of
    GradNorm's exact norms (the T weight gradients of the last shared layer W, less the one an
    ``ew`` step computes: the combined loss's W gradient is their sum), and ``(ew + extra) /
    ew``. Elementwise work (batch norm, ReLU, pooling, losses) is left out."""
    last = [p for p in model.shared.parameters() if p.dim() >= 2][-1]
    counts: list[tuple[nn.Module, int, int]] = []

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        per_output = weight[0].numel()  # (in channels / groups) x kernel, or in features
        macs = out.numel() * per_output
        backward = macs * (int(weight.requires_grad) + int(inputs[0].requires_grad))
        counts.append((module, macs, backward))

    hooks = [
        m.register_forward_hook(count)  # type: ignore[arg-type]
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    ew = float(sum(f + b for _, f, b in counts))
    w_grad = sum(f for m, f, _ in counts if getattr(m, "weight", None) is last)
    extra = float((len(model.heads) - 1) * w_grad)
    return ew, extra, (ew + extra) / ew


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


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory: no trimming of the heap's top, no ``mmap`` per
    large block (both thresholds to 1 GiB). False where that is unavailable (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 30))


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
