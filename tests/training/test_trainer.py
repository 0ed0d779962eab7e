"""The lower-level Trainer on a hand-made model and data: trainable subsets, frozen parts,
missing labels, rep mode, epoch_end, gradient statistics, model selection scores."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from taskbalance.balancing.base import GradientMethod, LossMethod
from taskbalance.models import MultiTaskModel
from taskbalance.tasks import classification_task
from taskbalance.training import Trainer, selection_score

TASKS = ("a", "b")


class MeanAggregation(GradientMethod):
    """Test-only gradient method: the mean of the task gradients."""

    prefers_rep_mode = True

    def _aggregate(self, J, losses, present):
        self.last_weights = J.new_full((J.shape[0],), 1.0 / J.shape[0])
        return J.mean(dim=0)


class RecordingSum(LossMethod):
    """Test-only loss method: the sum, recording what epoch_end receives."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.epoch_means: list[torch.Tensor] = []

    def _terms(self, losses, present):
        self.last_weights = losses.new_ones(self.num_tasks).detach()
        return losses

    def epoch_end(self, mean_losses, present=None):
        self.epoch_means.append(mean_losses.clone())


def make_data(n=48, labelled_b=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    ya = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    yb = (x[:, 2] > 0).long()
    mb = torch.rand(n, generator=g) < labelled_b
    return [
        (x[i], {"a": ya[i], "b": yb[i] * mb[i]}, {"a": torch.tensor(True), "b": mb[i]})
        for i in range(n)
    ]


def make_model(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    return MultiTaskModel(backbone, {"a": nn.Linear(16, 3), "b": nn.Linear(16, 2)})


def tasks():
    return [classification_task("a", 3), classification_task("b", 2)]


def loaders(labelled_b=1.0):
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(make_data(labelled_b=labelled_b), batch_size=8, shuffle=True, generator=gen)
    val = DataLoader(make_data(24, seed=1), batch_size=12)
    test = DataLoader(make_data(24, seed=2), batch_size=12)
    return train, val, test


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_trainable_subset_with_frozen_backbone(tmp_path):
    model = make_model()
    model.freeze("backbone")
    backbone, head_a, head_b = (
        snapshot(m) for m in (model.backbone, model.heads["a"], model.heads["b"])
    )
    trainer = Trainer(
        model, tasks(), "ew", *loaders(), trainable_tasks=["a"], epochs=2, progress=False
    )
    result = trainer.fit()
    assert not changed(backbone, model.backbone)
    assert not changed(head_b, model.heads["b"])
    assert changed(head_a, model.heads["a"])
    assert set(result.val) == {"a", "b"}  # every task is evaluated
    assert set(result.history[0]["train_loss"]) == {"a"}
    assert result.trainable_tasks == ["a"] and result.out_dir is None
    assert not list(tmp_path.iterdir())  # no out_dir: nothing written


def test_trainable_subset_trains_shared_part_but_not_other_heads():
    model = make_model()
    backbone, head_b = snapshot(model.backbone), snapshot(model.heads["b"])
    Trainer(model, tasks(), "ew", *loaders(), trainable_tasks=["a"], progress=False).fit()
    assert changed(backbone, model.backbone)
    assert not changed(head_b, model.heads["b"])


def test_task_without_labels_gets_no_loss_and_no_update():
    model = make_model()
    head_b = snapshot(model.heads["b"])
    method = RecordingSum(2)
    trainer = Trainer(model, tasks(), method, *loaders(labelled_b=0.0), epochs=2, progress=False)
    result = trainer.fit()
    assert result.history[0]["train_loss"]["b"] is None
    assert result.history[0]["weights"]["b"] is None
    assert result.history[0]["train_loss"]["a"] > 0
    assert not changed(head_b, model.heads["b"])
    # epoch_end: once per epoch, mean losses [T], NaN for the task without labels
    assert len(method.epoch_means) == 2
    means = method.epoch_means[0]
    assert means.shape == (2,) and means[0] > 0 and math.isnan(float(means[1]))


def test_partially_labelled_task_is_trained():
    model = make_model()
    head_b = snapshot(model.heads["b"])
    result = Trainer(model, tasks(), "ew", *loaders(labelled_b=0.5), progress=False).fit()
    assert result.history[0]["train_loss"]["b"] > 0
    assert changed(head_b, model.heads["b"])


def test_gradient_method_auto_rep_mode_logs_gradient_statistics():
    trainer = Trainer(make_model(), tasks(), MeanAggregation(2), *loaders(), progress=False)
    assert trainer.mode == "rep"
    record = trainer.fit().history[0]
    assert set(record["grad_norms"]) == {"a", "b"} and record["grad_norms"]["a"] > 0
    assert set(record["cosines"]) == {"a~b"} and -1 <= record["cosines"]["a~b"] <= 1
    assert record["weights"] == {"a": 0.5, "b": 0.5}


def test_affinity_is_logged_when_requested(tmp_path):
    kwargs: dict[str, Any] = {"mode": "param", "progress": False, "lr": 0.01}
    record = Trainer(make_model(), tasks(), MeanAggregation(2), *loaders(), **kwargs).fit()
    assert "affinity" not in record.history[0]  # off by default
    out = tmp_path / "run"
    trainer = Trainer(
        make_model(), tasks(), MeanAggregation(2), *loaders(), out_dir=out, affinity=True,
        **kwargs,
    )  # fmt: skip
    rec = trainer.fit().history[0]
    assert set(rec["affinity"]) == {"a>b", "b>a"}
    assert all(math.isfinite(v) for v in rec["affinity"].values())
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"affinity/a>b", "affinity/b>a"} <= set(header)


def test_gradient_method_param_mode():
    trainer = Trainer(
        make_model(), tasks(), MeanAggregation(2), *loaders(), mode="param", progress=False
    )
    record = trainer.fit().history[0]
    assert trainer.mode == "param" and record["grad_norms"]["b"] > 0


def test_method_for_wrong_number_of_tasks():
    with pytest.raises(ValueError, match="created for 2 task.*1 task"):
        Trainer(make_model(), tasks(), RecordingSum(2), *loaders(), trainable_tasks=["b"])


def test_method_by_name_and_unknown_trainable_task():
    trainer = Trainer(make_model(), tasks(), "ew", *loaders(), progress=False)
    assert trainer.method.num_tasks == 2
    with pytest.raises(ValueError, match="trainable_tasks"):
        Trainer(make_model(), tasks(), "ew", *loaders(), trainable_tasks=["c"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_trainer_rejects_unavailable_cuda_and_amp_on_cpu():
    with pytest.raises(ValueError, match="CUDA is not available"):
        Trainer(make_model(), tasks(), "ew", *loaders(), device="cuda")
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        Trainer(make_model(), tasks(), "ew", *loaders(), amp=True)


def test_selection_score_rules():
    (a, b) = tasks()
    first = {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.4}}
    assert selection_score(first, first, [a, b]) == 0.0
    better = {"a": {"accuracy": 0.6}, "b": {"accuracy": 0.5}}
    # Δm% = mean(-(0.6-0.5)/0.5, -(0.5-0.4)/0.4) * 100 = -22.5 (lower is better)
    assert selection_score(better, first, [a, b]) == pytest.approx(-22.5)
    # a zero baseline is left out instead of dividing by zero
    zero = {"a": {"accuracy": 0.0}, "b": {"accuracy": 0.4}}
    assert selection_score(better, zero, [a, b]) == pytest.approx(-25.0)
    # one task: its primary metric, negated when higher is better
    assert selection_score(better, first, [a]) == -0.6
    assert selection_score({"a": {"accuracy": math.nan}}, first, [a]) == math.inf


def test_progress_bars_when_stderr_is_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    trainer = Trainer(make_model(), tasks(), "ew", *loaders(), progress=True)
    assert trainer.progress
    trainer.fit()
    assert "epoch 1/1" in capsys.readouterr().err
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not Trainer(make_model(), tasks(), "ew", *loaders(), progress=True).progress


def test_tensorboard_receives_each_epoch_when_available(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def add_scalar(self, key, value, step):
            calls.append((key, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(
        "taskbalance.training.logging._tensorboard_writer", lambda log_dir, purge_step: FakeWriter()
    )
    Trainer(
        make_model(),
        tasks(),
        "ew",
        *loaders(),
        epochs=2,
        out_dir=tmp_path,
        tensorboard=True,
        progress=False,
    ).fit()
    keys = {(k, s) for k, _, s in calls}
    assert ("train_loss/a", 1) in keys and ("val/b/accuracy", 2) in keys
    assert (tmp_path / "history.jsonl").is_file() and (tmp_path / "results.json").is_file()


@pytest.mark.parametrize("method", ["ew", "mean"])
def test_rep_detach_model_still_trains_its_backbone(method):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    model = MultiTaskModel(
        backbone, {"a": nn.Linear(16, 3), "b": nn.Linear(16, 2)}, rep_detach=True
    )
    before = snapshot(model.backbone)
    chosen = MeanAggregation(2) if method == "mean" else "ew"
    Trainer(model, tasks(), chosen, *loaders(), progress=False).fit()
    assert changed(before, model.backbone)
    if method == "mean":
        with pytest.raises(ValueError, match="rep_detach"):
            Trainer(model, tasks(), MeanAggregation(2), *loaders(), mode="param")


@pytest.mark.parametrize("labelled_b", [1.0, 0.5])
def test_gradnorm_gets_the_head_views_and_trains_as_without_them(monkeypatch, labelled_b):
    # The Trainer hands GradNorm the heads' views of the features (one head pass and one
    # batched backward for the T norms); the run equals one whose Balancer gets no features
    # (T passes from each loss to the last shared layer), to float rounding.
    from taskbalance.balancing import Balancer

    fast = []
    step = Balancer._grad_norm_step

    def counted(self, *args):
        fast.append(1)
        return step(self, *args)

    monkeypatch.setattr(Balancer, "_grad_norm_step", counted)
    runs = []
    for variant in ("views", "no shared representation", "no views"):
        model = make_model()
        if variant == "no shared representation":  # the slow path: no features are passed
            model.supports_rep_mode = False
        if variant == "no views":  # features but no views: GradNorm's norms from the losses
            model.__class__ = type("NoViews", (MultiTaskModel,), {"head_inputs": None})
        fast.clear()
        kwargs: dict[str, Any] = {"progress": False, "lr": 0.05, "epochs": 2}
        result = Trainer(model, tasks(), "gradnorm", *loaders(labelled_b), **kwargs).fit()
        assert len(fast) == (12 if variant == "views" else 0)  # 2 epochs of 6 batches
        runs.append((snapshot(model), result.history))
    (fast_state, fast_history), *slow_runs = runs
    for slow_state, slow_history in slow_runs:
        for key, value in slow_state.items():
            torch.testing.assert_close(fast_state[key], value, rtol=1e-5, atol=1e-6)
        for a, b in zip(fast_history, slow_history):
            for task in ("a", "b"):
                assert a["weights"][task] == pytest.approx(b["weights"][task], rel=1e-5)
                assert a["train_loss"][task] == pytest.approx(b["train_loss"][task], rel=1e-5)


class NanGradientOn(nn.Module):
    """Identity whose input gradient is NaN on the chosen training calls (the value stays
    finite: ``x + 0·√(0·x)``, and d√u/du = inf at u = 0, times 0)."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def forward(self, x):
        if not self.training:
            return x
        self.count += 1
        return x + (x * 0.0).sqrt() if self.count - 1 in self.calls else x


def nan_model(calls):
    model = make_model()
    model.heads["b"] = nn.Sequential(NanGradientOn(calls), model.heads["b"])
    return model


@pytest.mark.parametrize("mode", ["param", "rep"])
def test_nonfinite_skip_makes_no_update_and_counts_the_step(mode):
    model = nan_model(calls=[0])
    trainer = Trainer(
        model, tasks(), "mgda", *loaders(), mode=mode, nonfinite="skip", progress=False
    )
    before = snapshot(model)
    batch = next(iter(trainer.train_loader))
    with pytest.warns(RuntimeWarning, match=r"task 'b' holds NaN or Inf.*1 step\(s\) skipped"):
        info = trainer.train_step(batch)
    assert info is not None and info.skipped and not changed(before, model)
    assert all(p.grad is None for p in model.parameters())  # the heads' gradients dropped
    info = trainer.train_step(batch)  # the next call is finite: an ordinary update
    assert info is not None and not info.skipped and changed(before, model)


def test_nonfinite_steps_are_counted_in_the_history_and_raise_by_default():
    trainer = Trainer(
        nan_model(calls=[1, 3]), tasks(), "mgda", *loaders(), nonfinite="skip", progress=False
    )
    with pytest.warns(RuntimeWarning, match="skipped a step"):
        result = trainer.fit()
    record = result.history[0]
    assert record["nonfinite_steps"] == 2 and record["steps"] == 6 - 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    ok = Trainer(make_model(), tasks(), "mgda", *loaders(), progress=False).fit()
    assert ok.history[0]["nonfinite_steps"] == 0
    with pytest.raises(ValueError, match="task 'b' holds NaN or Inf.*nonfinite='skip'"):
        Trainer(nan_model(calls=[0]), tasks(), "mgda", *loaders(), progress=False).fit()


def test_a_skipped_step_lowers_a_float16_loss_scale():
    """Precision.skip backs the GradScaler off as after an overflow (a CPU scaler stands in
    for CUDA's), drops the gradients and hands the step back."""
    from taskbalance.training.precision import Precision

    precision = Precision(False, "bfloat16", torch.device("cpu"), None)
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, backoff_factor=0.25)
    precision.scaler.scale(torch.ones(()))  # as each step's prepare_losses does first
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    assert precision.skip(optimizer, "info") == "info"
    assert precision.scaler.get_scale() == 256.0
    assert all(p.grad is None for p in layer.parameters())
