"""How a command runs: torch threads, one-line warnings, torchrun, and the extras that
provide optional packages.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from taskbalance.cli._common import MAX_DEFAULT_THREADS, UserError, log


def default_threads() -> tuple[int, str]:
    """The default torch thread count and why: the usable CPUs minus those busy with other work
    (1-minute load average), between 1 and :data:`MAX_DEFAULT_THREADS`.

    Measured (``benchmarks/bench_threads.py``, 2 CPUs): idle, 2 threads take 0.57x the time of
    one; with two other busy processes, 2 threads take 3.7x the time of one (oversubscription).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    free = cpus - round(load)
    threads = max(1, min(MAX_DEFAULT_THREADS, free))
    return threads, f"{cpus} CPUs, load {load:.1f}"


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
    """``--nproc N``: run this command as N processes under torchrun (its exit status)."""
    nproc = getattr(args, "nproc", None)
    if nproc is None or "WORLD_SIZE" in os.environ:
        return None
    from taskbalance.training.launch import launch

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
