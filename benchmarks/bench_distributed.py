"""Bytes each rank hands to collectives per step: distributed Balancer vs plain DDP (not a test).

Spawns R gloo ranks on the CPU (or NCCL ranks with ``--backend nccl``, one GPU each). Every
collective of a step is counted by the bytes of the tensors it is given (the payload; a ring
all-reduce sends about ``2 (R-1)/R`` times that per rank). Plain DDP is counted through a comm
hook on its gradient buckets. The model: an MLP trunk (``--width``, ``--depth``), T one-unit
heads, float32, local batch ``--batch``.

Usage: ``python benchmarks/bench_distributed.py [--tasks 2,10] [--ranks 2] [--width 256]``
"""

from __future__ import annotations

import argparse
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import taskbalance as tb

CONFIGS = [
    # (label, method, mode, memory)
    ("ew", "ew", "param", "jacobian"),
    ("uw", "uw", "param", "jacobian"),
    ("gradnorm", "gradnorm", "param", "jacobian"),
    ("mgda param", "mgda", "param", "jacobian"),
    ("mgda param gramian", "mgda", "param", "gramian"),
    ("mgda rep", "mgda", "rep", "jacobian"),
    ("graddrop rep", "graddrop", "rep", "jacobian"),
    ("pcgrad param", "pcgrad", "param", "jacobian"),
]


class Net(nn.Module):
    def __init__(self, tasks: int, width: int, depth: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(16, width), nn.Tanh()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.Tanh()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(tasks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.trunk(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


class Counter:
    """Wraps the collectives the Balancer calls and adds up their payload bytes."""

    def __init__(self) -> None:
        self.bytes = 0
        self._saved: dict[str, object] = {}

    def __enter__(self) -> Counter:
        for name in ("all_reduce", "all_gather", "broadcast"):
            original = getattr(dist, name)
            self._saved[name] = original

            def counted(tensor, *args, _original=original, _name=name, **kwargs):  # noqa: ANN001
                if _name == "all_gather":  # (outputs, input): what this rank sends
                    self.bytes += args[0].numel() * args[0].element_size()
                else:
                    self.bytes += tensor.numel() * tensor.element_size()
                return _original(tensor, *args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(dist, name, original)


def ddp_bytes(model: Net, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> int:
    ddp = nn.parallel.DistributedDataParallel(model)
    total = [0]

    def hook(state, bucket):  # noqa: ANN001 - DDP checks the annotation object itself
        buf = bucket.buffer()
        total[0] += buf.numel() * buf.element_size()
        buf.div_(dist.get_world_size())
        return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

    hook.__annotations__ = {"bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
    ddp.register_comm_hook(None, hook)
    _, preds = ddp(x)
    sum(((p - y[:, t]) ** 2).mean() for t, p in enumerate(preds)).backward()
    return total[0]


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    backend = args.backend
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    rows = []
    for T in args.tasks:
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(args.batch, 16, generator=g).to(device)
        y = torch.randn(args.batch, T, generator=g).to(device)
        plain = ddp_bytes(Net(T, args.width, args.depth).to(device), x, y, device)
        for label, name, mode, memory in CONFIGS:
            model = Net(T, args.width, args.depth).to(device)
            balancer = tb.Balancer(
                tb.create(name, T),
                model.trunk.parameters(),
                mode=mode,
                memory=memory,
                parameters=model.parameters(),
            )
            z, preds = model(x)
            losses = [((p - y[:, t]) ** 2).mean() for t, p in enumerate(preds)]
            balancer.backward(losses, features=z)  # first step: seeds, lazy state
            z, preds = model(x)
            losses = [((p - y[:, t]) ** 2).mean() for t, p in enumerate(preds)]
            with Counter() as c:
                balancer.backward(losses, features=z)
            rows.append((T, label, c.bytes, plain))
    if rank == 0:
        out["rows"] = rows
    dist.destroy_process_group()


def _run(rank: int, world: int, port: int, args: argparse.Namespace, path: str) -> None:
    out: dict = {}
    worker(rank, world, port, args, out)
    if rank == 0:
        torch.save(out, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="2,10")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    args = parser.parse_args()
    args.tasks = [int(t) for t in args.tasks.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_distributed_{os.getpid()}.pt")
    mp.start_processes(_run, args=(args.ranks, port, args, path), nprocs=args.ranks)
    rows = torch.load(path, weights_only=False)["rows"]
    os.remove(path)
    shared = Net(1, args.width, args.depth).trunk
    P = sum(p.numel() for p in shared.parameters())
    print(
        f"{args.ranks} ranks ({args.backend}), shared parameters P = {P:,}, local batch "
        f"{args.batch}, float32; payload bytes handed to collectives per step per rank"
    )
    print(f"{'T':>3}  {'method':<20} {'bytes':>12} {'plain DDP':>12} {'ratio':>7}")
    for T, label, nbytes, plain in rows:
        print(f"{T:>3}  {label:<20} {nbytes:>12,} {plain:>12,} {nbytes / plain:>7.2f}")


if __name__ == "__main__":
    main()
