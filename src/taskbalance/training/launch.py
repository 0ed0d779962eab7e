"""``taskbalance train --nproc N`` (and compare): start the same command under torchrun.

The command line runs again as N processes of ``python -m torch.distributed.run --standalone``
(torchrun on one machine: it picks a free port, gives every process its ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE``, and ends every process when one fails). Each process joins the group from
the environment (:func:`join_from_environment`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["join_from_environment", "strip_nproc", "torchrun_command", "under_torchrun"]


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher) started this process as a rank of a group."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_from_environment() -> int:
    """Join the group torchrun describes (gloo for CPU tensors, plus NCCL for CUDA tensors
    when every local rank has a GPU of its own, this one on ``cuda:LOCAL_RANK``); returns
    this rank. With fewer GPUs than local processes, gloo alone (train on the CPU)."""
    import torch
    import torch.distributed as dist

    from .distributed import init_from_environment

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    own_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    init_from_environment("cpu:gloo,cuda:nccl" if own_gpu else "gloo")
    return dist.get_rank()


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each started process runs)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command that runs ``taskbalance argv`` as ``nproc`` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "taskbalance",
        *strip_nproc(argv),
    ]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``taskbalance argv`` as ``nproc`` processes; returns torchrun's exit status."""
    return subprocess.call(torchrun_command(nproc, argv))
