"""A small LightningModule and a plain-Balancer reference loop for tests/test_lightning.py.

Run as a script (``python _lightning_worker.py OUT``) with the environment of one rank (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` = 2, ``MASTER_ADDR``, ``MASTER_PORT``), it is one of two ranks of a
Lightning ``strategy="ddp"`` run on CPU (gloo) for every method of ``DDP_CASES``, and writes its
final parameters to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import taskbalance as tb
from taskbalance.lightning import BalancedModule, TaskLosses

LR = 0.1
#: (method, mode) run on 2 ranks: a gradient method and a learnable loss method.
DDP_CASES = [("mgda", "param"), ("uw", "param")]
DDP_LOCAL_BATCH = 3
DDP_EPOCHS = 2


def dataset(n: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y_a = torch.randn(n, generator=g, dtype=torch.float64)
    y_b = (torch.rand(n, generator=g) > 0.5).to(torch.float64)
    return TensorDataset(x, y_a, y_b)


class Net(BalancedModule, L.LightningModule):
    """A trunk and two heads (regression "a", binary "b"), float64, the same start every time."""

    def __init__(self, method: str, mode: str = "param", scheduler: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6)).double()
        self.head_a = nn.Linear(6, 1).double()
        self.head_b = nn.Linear(6, 1).double()
        self.scheduler = scheduler
        self.set_balancing(tb.create(method, num_tasks=2), self.trunk.parameters(), mode)

    def losses(self, batch: Any) -> tuple[dict[str, Tensor], Tensor]:
        x, y_a, y_b = batch
        z = self.trunk(x)
        a = (self.head_a(z).squeeze(-1) - y_a).pow(2).mean()
        b = F.binary_cross_entropy_with_logits(self.head_b(z).squeeze(-1), y_b)
        return {"a": a, "b": b}, z

    def task_losses(self, batch: Any, batch_idx: int) -> TaskLosses:
        losses, z = self.losses(batch)
        return TaskLosses(losses, features=z)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=LR)
        if self.scheduler is None:
            return opt
        sched = make_scheduler(opt, self.scheduler)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.scheduler}}


def make_scheduler(opt: torch.optim.Optimizer, interval: str) -> Any:
    # halves the rate every epoch, or every 2 steps
    return torch.optim.lr_scheduler.StepLR(opt, 1 if interval == "epoch" else 2, gamma=0.5)


def flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def reference(
    method: str, mode: str, batch_size: int, epochs: int, scheduler: str | None = None
) -> tuple[Tensor, list[tb.StepInfo]]:
    """The same training by hand in one process: Balancer, SGD, epoch_end, scheduler."""
    net = Net(method, mode)
    balancer = tb.Balancer(net.balancing_method, net.trunk.parameters(), mode, process_group=None)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    sched = None if scheduler is None else make_scheduler(opt, scheduler)
    infos: list[tb.StepInfo] = []
    for _ in range(epochs):
        epoch: list[Tensor] = []
        for batch in DataLoader(dataset(), batch_size=batch_size):
            opt.zero_grad()
            losses, z = net.losses(batch)
            info = balancer.backward(losses, z)
            opt.step()
            if sched is not None and scheduler == "step":
                sched.step()
            epoch.append(info.losses)
            infos.append(info)
        net.balancing_method.epoch_end(torch.stack(epoch).mean(0).float())
        if sched is not None and scheduler == "epoch":
            sched.step()
    return flat(net), infos


def fit(
    net: Net, batch_size: int, epochs: int, sampler: Any = None, **trainer_options: Any
) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    trainer.fit(net, DataLoader(dataset(), batch_size=batch_size, sampler=sampler))
    return trainer


#: Gradient buckets DDP's own reducer all-reduced (its communication hook counts them).
DDP_REDUCTIONS = [0]


def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks annotations
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    DDP_REDUCTIONS[0] += 1
    return allreduce_hook(state, bucket)


def plain_ddp_reductions() -> int:
    """The hook counts: one plain DDP backward outside no_sync() makes DDP reduce."""
    before = DDP_REDUCTIONS[0]
    ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 1).double())
    ddp.register_comm_hook(None, counting_hook)
    ddp(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    return DDP_REDUCTIONS[0] - before


def main(out: str) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    rank = int(os.environ["RANK"])
    results: dict[str, Any] = {}
    for method, mode in DDP_CASES:
        try:
            net = Net(method, mode)
            strategy = DDPStrategy(process_group_backend="gloo", ddp_comm_hook=counting_hook)
            # unshuffled: rank r takes samples r, r + 2, ..., so the union of the ranks' k-th
            # batches is the k-th batch of 2 x DDP_LOCAL_BATCH samples of one process
            sampler: DistributedSampler = DistributedSampler(dataset(), 2, rank, shuffle=False)
            fit(
                net,
                DDP_LOCAL_BATCH,
                DDP_EPOCHS,
                sampler,
                devices=2,
                strategy=strategy,
                use_distributed_sampler=False,
            )
            results[method] = flat(net)
        except Exception:  # reported by the test, which reads this file
            results[method] = traceback.format_exc()
    results["ddp_reductions"] = DDP_REDUCTIONS[0]
    results["plain_ddp_reductions"] = plain_ddp_reductions()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    # Tear gloo down on both ranks together: a rank leaving while its peer's gloo threads still
    # talk to it ended with "terminate called without an active exception" (~1 in 6 runs).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
