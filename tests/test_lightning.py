"""taskbalance.lightning: a LightningModule trained by Lightning takes exactly the steps of a
plain Balancer loop (one process), and 2 DDP ranks take the steps of one process on the union
batch (Lightning's CPU DDP over gloo, the ranks started by the test)."""

from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="the lightning extra is not installed")

sys.path.insert(0, os.path.dirname(__file__))
import _lightning_worker as W  # noqa: E402

import taskbalance as tb  # noqa: E402
from taskbalance.lightning import BalancedModule  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def _moved(method: str, mode: str, params: torch.Tensor) -> float:
    return float((params - W.flat(W.Net(method, mode))).abs().max())


@pytest.mark.parametrize(
    ("method", "mode", "scheduler"),
    [("uw", "param", None), ("mgda", "rep", "step"), ("dwa", "param", "epoch")],
)
def test_lightning_fit_equals_the_same_steps_by_hand(method, mode, scheduler) -> None:
    # 3 epochs of 3 steps: uw's parameters learn, mgda's weights come from the features'
    # Gramian, dwa's weights leave 1 in the third epoch (epoch_end), the rate halves
    net = W.Net(method, mode, scheduler)
    trainer = W.fit(net, batch_size=4, epochs=3)
    expected, infos = W.reference(method, mode, 4, 3, scheduler)
    assert _moved(method, mode, expected) > 1e-2  # the comparison is not between two starts
    torch.testing.assert_close(W.flat(net), expected, rtol=1e-12, atol=1e-12)
    last = infos[-1]
    assert last.weights is not None
    logged = trainer.callback_metrics
    epoch_weights = torch.stack([info.weights for info in infos[-3:]]).mean(0)  # type: ignore[misc]
    for i, task in enumerate(last.task_names):
        assert float(logged[f"balance/loss/{task}_step"]) == pytest.approx(float(last.losses[i]))
        assert float(logged[f"balance/weight/{task}_step"]) == pytest.approx(float(last.weights[i]))
        assert float(logged[f"balance/weight/{task}_epoch"]) == pytest.approx(
            float(epoch_weights[i])
        )
    if method == "mgda":
        assert last.cosines is not None
        assert float(logged["balance/cos/a~b_step"]) == pytest.approx(float(last.cosines[0, 1]))
    if method == "dwa":
        assert abs(float(last.weights[0]) - 1.0) > 1e-3  # epoch_end reached the method
    if scheduler is not None:  # the scheduler changed the outcome
        plain, _ = W.reference(method, mode, 4, 3)
        assert float((plain - expected).abs().max()) > 1e-3


def test_the_method_parameters_must_be_in_an_optimizer() -> None:
    class OnlyModel(W.Net):
        def configure_optimizers(self):
            params = [p for n, p in self.named_parameters() if not n.startswith("balancing")]
            return torch.optim.SGD(params, lr=0.1)

    with pytest.raises(ValueError, match=r"balancing_method\.parameters\(\)"):
        W.fit(OnlyModel("uw"), batch_size=4, epochs=1)


def test_a_loss_scaling_precision_is_refused() -> None:
    # fp16 AMP scales the loss in manual_backward, which the Balancer replaces; on CPU the
    # plugin is given directly (Trainer(precision="16-mixed") falls back to bf16 there)
    from lightning.pytorch.plugins.precision import MixedPrecision

    fp16 = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="bf16-mixed"):
        W.fit(W.Net("ew"), batch_size=4, epochs=1, plugins=[fp16])


def test_set_balancing_checks_its_inputs() -> None:
    net = W.Net("ew")
    with pytest.raises(ValueError, match="not parameters of this module"):
        net.set_balancing(tb.create("ew", num_tasks=2), torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="set from the Lightning strategy"):
        net.set_balancing(tb.create("ew", num_tasks=2), net.trunk.parameters(), parameters=[])
    with pytest.raises(ValueError, match="mode must be one of"):
        net.set_balancing(tb.create("ew", num_tasks=2), net.trunk.parameters(), "both")

    with pytest.raises(ValueError, match=r"BalancedModule.*create\('modo', T, sampling='single'"):
        net.set_balancing(tb.create("modo", num_tasks=2), net.trunk.parameters())

    class NotLightning(BalancedModule):
        pass

    with pytest.raises(TypeError, match="mixin for a LightningModule"):
        NotLightning().set_balancing(tb.create("ew", num_tasks=2), [])


def test_without_lightning_the_import_names_the_extra(monkeypatch) -> None:
    for name in ("lightning", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: find_spec is None
    monkeypatch.delitem(sys.modules, "taskbalance.lightning")  # imported afresh, then restored
    with pytest.raises(
        ModuleNotFoundError, match=re.escape('pip install "taskbalance[lightning]"')
    ):
        importlib.import_module("taskbalance.lightning")


def test_the_docs_example_trains(tmp_path, monkeypatch) -> None:
    text = (SRC.parent / "docs" / "distributed.md").read_text(encoding="utf-8")
    section = text.split("\n## Lightning\n", 1)[1]
    block = re.search(r"^```python\n(.*?)^```", section, re.M | re.S)
    assert block is not None, "docs/distributed.md, Lightning: no python example"
    monkeypatch.chdir(tmp_path)  # Lightning's default logger and checkpoints write here
    names: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(block.group(1), "docs/distributed.md", "exec"), names)
    module = names["trainer"].lightning_module  # type: ignore[attr-defined]
    assert module.trainer.global_step == 8  # 2 epochs of 4 batches
    learned = torch.cat([p.detach().reshape(-1) for p in module.balancing_method.parameters()])
    assert learned.abs().min() > 0  # uw's log-variances start at 0 and were trained


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ranks(out: Path) -> list[tuple[int, str]]:
    """Start the 2 ranks on a free port; their return codes and logs."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": "2",
            "NODE_RANK": "0",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),  # Lightning: the processes are started externally
        }
        worker = Path(W.__file__)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(worker), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])  # a hang fails instead of blocking CI
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the Lightning DDP ranks did not finish (deadlock?)")
    return [(p.returncode, log) for p, log in zip(procs, logs)]


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    # A rank exited non-zero in ~1 of 6 full suite runs after finishing its work ("terminate
    # called without an active exception" at gloo teardown; the worker now destroys the group on
    # both ranks together). Should a start still fail for such an environmental reason, it is
    # retried once on a new port with the first failure's log as a warning; a real failure fails
    # both attempts and the first attempt's logs are shown.
    first: list[tuple[int, str]] = []
    for attempt in range(2):
        out = tmp_path_factory.mktemp(f"lightning_ddp{attempt}")
        ranks = _run_ranks(out)
        if all(code == 0 for code, _ in ranks):
            if first:
                tails = " | ".join(log[-1500:] for code, log in first if code != 0)
                warnings.warn(f"Lightning DDP ranks failed once, retried: {tails}", stacklevel=1)
            return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
        first = first or ranks
    logs = "\n".join(
        f"rank {rank} (first attempt) exited {code}:\n{log[-3000:]}"
        for rank, (code, log) in enumerate(first)
    )
    pytest.fail(f"the Lightning DDP ranks failed twice:\n{logs}")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "mode"), W.DDP_CASES)
def test_two_ddp_ranks_equal_one_process_on_the_union_batch(ddp_ranks, method, mode) -> None:
    got = [r[method] for r in ddp_ranks]
    for rank, g in enumerate(got):
        assert isinstance(g, torch.Tensor), f"rank {rank} failed:\n{g}"
    union, _ = W.reference(method, mode, 2 * W.DDP_LOCAL_BATCH, W.DDP_EPOCHS)
    local, _ = W.reference(method, mode, W.DDP_LOCAL_BATCH, W.DDP_EPOCHS)
    assert float((union - local).abs().max()) > 1e-2  # the union batch makes a difference
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=0)
    torch.testing.assert_close(got[0], union, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_ddp_does_not_reduce_the_gradients_on_top_of_the_balancer(ddp_ranks) -> None:
    for r in ddp_ranks:
        assert r["plain_ddp_reductions"] > 0  # the counting hook sees DDP's reductions
        assert r["ddp_reductions"] == 0  # none while Lightning trained with the Balancer


LAM = 0.3  # the penalty λ‖W‖² of the trunk's first weight: gradient 2λW


class Hooked(W.Net):
    """W.Net with the Trainer's two model hooks: a penalty ``λ‖W_trunk0‖²`` and a per-epoch
    schedule that scales task a's loss by 0.5^epoch."""

    def __init__(self, method: str, mode: str = "param") -> None:
        super().__init__(method, mode)
        self.scale = 1.0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)
        self.scale = 0.5**epoch

    def regularization(self) -> torch.Tensor:
        return LAM * _first_weight(self).pow(2).sum()

    def losses(self, batch):
        losses, z = super().losses(batch)
        return {**losses, "a": losses["a"] * self.scale}, z


def _first_weight(net: W.Net) -> torch.Tensor:
    layer = net.trunk[0]
    assert isinstance(layer, torch.nn.Linear)
    return layer.weight


def _hooked_by_hand(method: str, mode: str, batch_size: int, epochs: int) -> torch.Tensor:
    """The hooked training by hand: the scale set per epoch, the balanced update plus 2λW."""
    net = Hooked(method, mode)
    balancer = tb.Balancer(net.balancing_method, net.trunk.parameters(), mode, process_group=None)
    opt = torch.optim.SGD(net.parameters(), lr=W.LR)
    for epoch in range(epochs):
        net.scale = 0.5**epoch
        epoch_losses = []
        for batch in torch.utils.data.DataLoader(W.dataset(), batch_size=batch_size):
            opt.zero_grad()
            losses, z = net.losses(batch)
            info = balancer.backward(losses, z)
            weight = _first_weight(net)
            assert weight.grad is not None
            weight.grad += 2 * LAM * weight.detach()
            opt.step()
            epoch_losses.append(info.losses)
        net.balancing_method.epoch_end(torch.stack(epoch_losses).mean(0).float())
    return W.flat(net)


@pytest.mark.parametrize(("method", "mode"), [("ew", "param"), ("mgda", "rep"), ("dwa", "param")])
def test_lightning_honours_the_model_hooks_as_the_trainer(method, mode) -> None:
    # regularization(): its gradient joins every step unbalanced; set_epoch(e) before epoch e
    net = Hooked(method, mode)
    W.fit(net, batch_size=4, epochs=3)
    expected = _hooked_by_hand(method, mode, 4, 3)
    plain, _ = W.reference(method, mode, 4, 3)  # the same steps without the hooks
    assert float((plain - expected).abs().max()) > 1e-2  # the hooks change the outcome
    assert net.epochs_seen == [0, 1, 2]
    torch.testing.assert_close(W.flat(net), expected, rtol=1e-12, atol=1e-12)


def test_lightning_refuses_a_penalty_under_several_processes() -> None:
    from types import SimpleNamespace

    net = Hooked("ew")
    net.trainer = SimpleNamespace(world_size=2)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="gradient would stay local to each rank"):
        net._backward_regularization()
