"""Time per training step of several configurations under the same conditions.

Runs of a comparison train at different moments (and, with ``--jobs``, side by side), so their
own ``seconds_per_step`` mix machine states: on a shared machine a method could look 3x faster
than ``ew``. :func:`measure_step_times` builds every configuration once, in one process and one
thread setting, and times them **interleaved**: in each round every configuration takes
``steps`` training steps in turn (the order rotates between rounds, so none is always first after
another), and the round's seconds per step are recorded. Reports show the median and the range
over rounds. Training steps are real (forward, balancing, optimizer step) on real batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["build_trainer", "measure_step_times"]


def build_trainer(config: Mapping[str, Any]) -> Any:
    """A :class:`~taskbalance.training.Trainer` for ``config`` (a ``TrainConfig`` dict) built by
    the runner (:func:`taskbalance.training.runner.build_trainer`), without a run folder
    (nothing is written)."""
    from taskbalance.training.runner import build_trainer as build

    return build({**config, "out_dir": None, "progress": False, "save_best": False})


class _Stepper:
    """One configuration's trainer and an endless stream of its training batches."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.batches = iter(trainer.train_loader)
        trainer.model.train()

    def step(self) -> None:
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.trainer.train_loader)
            batch = next(self.batches)
        self.trainer.train_step(batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_times(
    configs: Mapping[str, Mapping[str, Any]],
    *,
    rounds: int = 5,
    steps: int = 4,
    warmup: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Seconds per training step of each configuration, measured interleaved in one process.

    Args:
        configs: name -> ``TrainConfig`` dict.
        rounds: rounds of measurement; each gives one value per configuration.
        steps: training steps per configuration and round (timed together, divided).
        warmup: untimed steps per configuration first (allocations, caches).

    Returns:
        ``{"seconds": {name: [seconds per step of each round]}, "rounds", "steps", "warmup",
        "threads", "device"}``.
    """
    if rounds < 1 or steps < 1 or warmup < 0:
        raise ValueError(
            f"rounds and steps must be >= 1, warmup >= 0; got {rounds}, {steps}, {warmup}"
        )
    steppers = {name: _Stepper(build_trainer(cfg)) for name, cfg in configs.items()}
    names = list(steppers)
    device = next(iter(steppers.values())).trainer.device if steppers else torch.device("cpu")
    for stepper in steppers.values():
        for _ in range(warmup):
            stepper.step()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                steppers[name].step()
            _sync(device)
            seconds[name].append((time.perf_counter() - start) / steps)
        if log is not None:
            log(f"timing pass: round {r + 1}/{rounds}")
    return {
        "seconds": seconds,
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
