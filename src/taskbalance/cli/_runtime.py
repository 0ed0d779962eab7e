"""How a command runs: torch threads, one-line warnings, torchrun, and the extras that
provide optional packages.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from taskbalance.cli._common import MAX_DEFAULT_THREADS, UserError, log

#: ``() -> text of /proc/stat`` (``None`` where it cannot be read).
StatReader = Callable[[], "str | None"]


def _read_proc_stat() -> str | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            return handle.read()
    except OSError:  # not Linux
        return None


def _cpu_times(text: str, cpus: Collection[int]) -> dict[int, tuple[int, int]]:
    """``{cpu: (busy, total)}`` jiffies of the per-CPU lines of /proc/stat: user, nice, system,
    idle, iowait, irq, softirq, steal (guest time is counted in user already); idle and iowait
    are not busy."""
    times = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            total = sum(values)
            times[int(name[3:])] = (total - values[3] - values[4], total)
    return times


def busy_cpus(
    cpus: Collection[int],
    read_stat: StatReader = _read_proc_stat,
    wait: Callable[[float], Any] = time.sleep,
    interval: float = 0.1,
) -> float | None:
    """How many of ``cpus`` (CPU numbers) other work keeps busy now: the busy fraction of each
    over ``interval`` seconds (two reads of /proc/stat), summed. ``None`` where /proc/stat cannot
    be read or names none of ``cpus``."""
    first = read_stat()
    if first is None:
        return None
    wait(interval)
    second = read_stat()
    before, after = _cpu_times(first, cpus), _cpu_times(second or "", cpus)
    busy = 0.0
    for cpu in set(before) & set(after):
        elapsed = after[cpu][1] - before[cpu][1]
        if elapsed > 0:
            busy += min(1.0, max(0.0, (after[cpu][0] - before[cpu][0]) / elapsed))
    return busy if before and after else None


def default_threads(read_stat: StatReader = _read_proc_stat) -> tuple[int, str]:
    """The default torch thread count and why: the usable CPUs minus those busy with other work
    now (:func:`busy_cpus` over 0.1 s; without /proc/stat, the 1-minute load average), between 1
    and :data:`MAX_DEFAULT_THREADS`. A load average lags: after a heavy job it still counted the
    CPUs busy for minutes.

    Measured (``benchmarks/bench_threads.py``, 2 CPUs): idle, 2 threads take 0.57x the time of
    one; with two other busy processes, 2 threads take 3.7x the time of one (oversubscription).
    """
    try:
        usable = set(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        usable = set(range(os.cpu_count() or 1))
    busy = busy_cpus(usable, read_stat)
    if busy is not None:
        why = f"{len(usable)} CPUs, {busy:.1f} busy"
    else:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
        why = f"{len(usable)} CPUs, load {busy:.1f}"
    threads = max(1, min(MAX_DEFAULT_THREADS, len(usable) - round(busy)))
    return threads, why


def set_threads(requested: int | None) -> None:
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
        log(f"torch threads: {requested} (--threads)")
        return
    threads, why = default_threads()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:  # torchrun's processes on this machine share its CPUs
        threads, why = max(1, threads // local), f"{why}, {local} processes"
    torch.set_num_threads(threads)
    log(f"torch threads: {threads} ({why}; --threads N to change)")


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings of the command line are one line each (no source excerpt)."""
    text = " ".join(str(message).split())
    print(f"taskbalance: warning: {text}", file=file or sys.stderr, flush=True)


#: The commands that run under torchrun (the ranks train each run together; rank 0 writes).
DISTRIBUTED_COMMANDS = ("train", "compare")


def join_torchrun(args: argparse.Namespace) -> bool:
    """Under torchrun: join the group (train, compare) or refuse (the other commands); the
    ranks other than 0 print nothing on stdout. ``False`` when not under torchrun."""
    from taskbalance.training.launch import join_from_environment, under_torchrun

    world = os.environ.get("WORLD_SIZE", "1")
    if args.command not in DISTRIBUTED_COMMANDS:
        if world.isdigit() and int(world) > 1:
            raise UserError(
                f"'taskbalance {args.command}' does not run under torchrun (WORLD_SIZE={world}): "
                "each rank would repeat the whole work; run it in one process (train and "
                "compare run under torchrun, docs/distributed.md)"
            )
        return False
    if not under_torchrun():
        return False
    if getattr(args, "nproc", None) is not None:
        raise UserError("--nproc starts torchrun itself; under torchrun leave --nproc out")
    if join_from_environment() != 0:
        _QUIET.append(sys.stdout)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 alone reports
    return True


_QUIET: list[Any] = []  # the stdout a rank other than 0 set aside while it runs


def start_torchrun(args: argparse.Namespace, argv: Sequence[str] | None) -> int | None:
    """``--nproc N``: run this command as N processes under torchrun (its exit status). The
    command's ``check_launch(args)`` (set as a parser default) first refuses, here, the input
    its ranks would refuse before training (one error rather than one per rank and torchrun's
    failure report)."""
    nproc = getattr(args, "nproc", None)
    if nproc is None or "WORLD_SIZE" in os.environ:
        return None
    from taskbalance.training.launch import launch

    check: Callable[[argparse.Namespace], None] | None = getattr(args, "check_launch", None)
    if check is not None:
        check(args)
    log(f"starting {nproc} processes with torchrun (torch.distributed.run --standalone)")
    return launch(nproc, list(sys.argv[1:] if argv is None else argv))


def leave_torchrun() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if _QUIET:
        sys.stdout.close()
        sys.stdout = _QUIET.pop()


#: Import name -> (pip package, extra that installs it). The core (``import taskbalance``) needs
#: torch and numpy only; the commands need the rest (pyproject.toml, optional-dependencies).
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "yaml": ("pyyaml", "cli"),
    "tqdm": ("tqdm", "cli"),
    "optuna": ("optuna", "cli"),
    "matplotlib": ("matplotlib", "cli"),
    "sklearn": ("scikit-learn", "cli"),
    "scipy": ("scipy", "cli"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "torchvision": ("torchvision", "vision"),
}


def extra_for(module: str | None) -> tuple[str, str] | None:
    """The pip package and extra that provide ``module`` (None for a module of no extra)."""
    return OPTIONAL_PACKAGES.get((module or "").partition(".")[0])
