"""Worker of the distributed balancing tests (imported by spawned processes and by the test).

A small float64 model (shared trunk, one linear head per task) takes two steps. The distributed
run gives each rank its own part of each step's batch (unequal sizes, labels masked, task 2
absent on rank 0 in the masked batches, no label at all on rank 0 in the first "empty" step);
the reference runs one process on the union batch
(rank 0's samples, then rank 1's). Losses are means over each task's labelled samples.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

import taskbalance
from taskbalance import Balancer
from taskbalance.balancing.registry import method_info

T = 3
#: Where the distributed runs put model and data (a device script sets CUDA).
DEVICE = torch.device("cpu")
SIZES = (3, 5)  # local batch sizes of rank 0 and rank 1
STEPS = 2


def cases() -> list[tuple[str, str, str]]:
    """(method, mode, variant): every method in both modes; memory='gramian' and DDP extras."""
    out = []
    for name in taskbalance.available_methods():
        cls = method_info(name).cls
        for mode in ("param", "rep"):
            if mode == "rep" and not getattr(cls, "supports_rep_mode", True):
                continue
            out.append((name, mode, "masked"))
        if getattr(cls, "uses_gramian", False):
            out.append((name, "param", "gramian"))
    for name in ("ew", "uw", "mgda", "graddrop"):
        out.append((name, "param", "ddp"))
    # rank 0 has no label at all in the first step (it passes every loss as None)
    for name, mode in (
        ("ew", "param"),
        ("uw", "param"),
        ("gradnorm", "param"),
        ("mgda", "param"),
        ("mgda", "rep"),
        ("graddrop", "rep"),
    ):
        out.append((name, mode, "empty"))
    return out


def make_method(name: str, seed: int | None = 0):
    options: dict[str, object] = {}
    if name == "static":
        options["weights"] = [0.5, 1.0, 2.0]
    if "seed" in method_info(name).options:
        options["seed"] = seed
    if "sampling" in method_info(name).options:  # a distributed step takes one batch a step
        options["sampling"] = "single"
    return taskbalance.create(name, T, **options)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(T))
        self.double()

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [h(z).squeeze(-1) for h in self.heads]


def batch(step: int, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """The union batch of a step: inputs, targets [B, T], label mask [B, T]."""
    g = torch.Generator().manual_seed(100 + step)
    B = sum(SIZES)
    x = torch.randn(B, 4, generator=g, dtype=torch.float64)
    y = torch.randn(B, T, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3])
    mask = torch.ones(B, T, dtype=torch.bool)
    if variant == "empty" and step == 0:
        mask[: SIZES[0]] = False
    if variant in ("masked", "empty"):
        mask[: SIZES[0], 2] = False  # task 2: no label on rank 0
        mask[SIZES[0] + 1, 1] = False  # task 1: one sample unlabelled on rank 1
        mask[0, 0] = False
    return x, y, mask


def local_part(rank: int | None, step: int, variant: str) -> tuple[Tensor, Tensor, Tensor]:
    x, y, m = batch(step, variant)
    if rank is None:
        return x, y, m
    start = sum(SIZES[:rank])
    sl = slice(start, start + SIZES[rank])
    return x[sl], y[sl], m[sl]


def run_case(name: str, mode: str, variant: str, rank: int | None, seed: int | None = 0) -> Tensor:
    """Every parameter (model, then method) after STEPS steps, flattened."""
    device = DEVICE if rank is not None else torch.device("cpu")
    model = Net().to(device)
    method = make_method(name, seed)
    net: nn.Module = model
    if variant == "ddp" and rank is not None:
        net = nn.parallel.DistributedDataParallel(model)
    balancer = Balancer(
        method,
        model.trunk.parameters(),
        mode=mode,
        memory="gramian" if variant == "gramian" else "jacobian",
        process_group="auto" if rank is not None else None,
        parameters=model.parameters(),
    )
    params = [*model.parameters(), *balancer.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    for step in range(STEPS):
        x, y, m = (v.to(device) for v in local_part(rank, step, variant))
        opt.zero_grad()
        ctx = net.no_sync() if isinstance(net, nn.parallel.DistributedDataParallel) else _null()
        with ctx:
            z, preds = net(x)
            losses: dict[str, Tensor | None] = {}
            counts = {}
            for t in range(T):
                k = int(m[:, t].sum())
                counts[f"t{t}"] = k
                losses[f"t{t}"] = ((preds[t] - y[:, t]) ** 2)[m[:, t]].mean() if k else None
            balancer.backward(losses, features=z, counts=counts)
        opt.step()
    return torch.cat([p.detach().reshape(-1).cpu() for p in params])


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def nan_guard(rank: int) -> str:
    """Rank 1's loss is NaN: every rank must raise (no rank left waiting)."""
    model = Net().to(DEVICE)
    balancer = Balancer(taskbalance.create("mgda", T), model.trunk.parameters())
    x, y, _ = (v.to(DEVICE) for v in local_part(rank, 0, "full"))
    _, preds = model(x)
    losses = [((p - y[:, t]) ** 2).mean() for t, p in enumerate(preds)]
    if rank == 1:
        losses[1] = losses[1] * float("nan")
    try:
        balancer.backward(losses)
    except Exception as exc:  # noqa: BLE001 - the test inspects which error each rank saw
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def worker(rank: int, world: int, port: int, outdir: str, backend: str = "gloo") -> None:
    global DEVICE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    if os.environ.get("TASKBALANCE_TEST_CUDA") == "1":
        DEVICE = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(DEVICE)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    results: dict[str, object] = {}
    try:
        for case in cases():
            key = "/".join(case)
            try:
                results[key] = run_case(*case, rank=rank)
            except Exception:  # noqa: BLE001 - reported per case, the others still run
                results[key] = traceback.format_exc()
        for name in ("rlw", "pcgrad", "graddrop", "gradvac"):  # unseeded: ranks must agree
            key = f"unseeded/{name}"
            try:
                results[key] = run_case(name, "param", "masked", rank=rank, seed=None)
            except Exception:  # noqa: BLE001
                results[key] = traceback.format_exc()
        results["nan_guard"] = nan_guard(rank)
    finally:
        torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
        dist.destroy_process_group()
