"""The trainer's small parts, each against hand computations: precision policy, optimizer and
scheduler factories, epoch statistics, model selection, argument resolution."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import taskbalance as tb
from taskbalance.balancing import StepInfo
from taskbalance.training.build import check_counts, choose_mode, resolve_method, resolve_tasks
from taskbalance.training.epoch_stats import EpochStats
from taskbalance.training.factories import build_optimizer, build_scheduler
from taskbalance.training.precision import Precision, ScaleGrad
from taskbalance.training.selection import comparable_metrics, selection_score

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------- precision
def test_precision_off_keeps_values_and_casts_to_float32() -> None:
    p = Precision(False, "bfloat16", CPU, tb.create("ew", 2))
    x = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    losses, scale = p.prepare_losses({"a": x, "b": None})
    assert scale is None and losses["b"] is None
    a = losses["a"]
    assert a is not None and a.dtype == torch.float32 and float(a.detach()) == 1.5
    with p.autocast():  # a null context off CUDA
        assert not torch.is_autocast_enabled()


def test_scale_grad_multiplies_the_gradient_only() -> None:
    x = torch.tensor([2.0, -3.0], requires_grad=True)
    y = ScaleGrad.apply(x, torch.tensor(8.0))
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0])).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [8.0, 16.0]  # d/dx (x1 + 2 x2) = (1, 2), times the scale 8


@pytest.mark.parametrize(
    ("amp", "dtype", "message"),
    [(True, "bfloat16", "needs a CUDA device"), (False, "float8", "amp_dtype must be")],
)
def test_precision_refuses_what_cannot_run(amp: bool, dtype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Precision(amp, dtype, CPU, tb.create("ew", 2))


# ------------------------------------------------------------------------------- factories
def params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3))]


def test_named_optimizers_get_their_settings() -> None:
    adam = build_optimizer("adam", params(), lr=0.01, weight_decay=0.1)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["lr"] == 0.01 and adam.param_groups[0]["weight_decay"] == 0.1
    sgd = build_optimizer("sgd", params(), lr=0.1)
    assert sgd.param_groups[0]["momentum"] == 0.9  # the default momentum
    sgd0 = build_optimizer("sgd", params(), lr=0.1, options={"momentum": 0.0})
    assert sgd0.param_groups[0]["momentum"] == 0.0
    given = torch.optim.SGD(params(), lr=1.0)
    assert build_optimizer(given, params()) is given
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer("lion", params())
    with pytest.raises(ValueError, match="bad optimizer_options"):
        build_optimizer("adam", params(), options={"nesterov": True})


def lrs(scheduler: str, epochs: int, lr: float = 1.0) -> list[float]:
    opt = torch.optim.SGD(params(), lr=lr)
    sched = build_scheduler(scheduler, opt, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_follows_the_closed_form() -> None:
    # lr_k = lr (1 + cos(pi k / T)) / 2 for epoch k = 0..T-1
    expected = [(1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert lrs("cosine", 4) == pytest.approx(expected, rel=1e-12)


def test_step_schedule_divides_by_ten_every_third_of_the_run() -> None:
    assert lrs("step", 7) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001], rel=1e-12)
    assert lrs("step", 2) == pytest.approx([1, 0.1], rel=1e-12)  # step size at least 1


def test_scheduler_none_and_bad_names() -> None:
    opt = torch.optim.SGD(params(), lr=1.0)
    assert build_scheduler("none", opt, 3) is None and build_scheduler(None, opt, 3) is None
    with pytest.raises(ValueError, match="scheduler_options given"):
        build_scheduler("none", opt, 3, {"gamma": 0.5})
    with pytest.raises(ValueError, match="scheduler must be"):
        build_scheduler("linear", opt, 3)


# ------------------------------------------------------------------------------- epoch stats
def step(losses, present, weights=None, norms=None, cosines=None) -> StepInfo:
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return StepInfo(
        ("a", "b"),
        torch.tensor(losses, dtype=torch.float32),
        torch.tensor(present),
        weights=t(weights),
        grad_norms=t(norms),
        cosines=t(cosines),
    )


def test_epoch_stats_average_each_task_over_the_steps_it_had_labels() -> None:
    stats = EpochStats(2, CPU)
    stats.add(step([1.0, 4.0], [True, True], [0.5, 1.5], [2.0, 3.0], [[1, -0.5], [-0.5, 1]]))
    stats.add(step([3.0, 0.0], [True, False], [1.0, 0.0], [4.0, 0.0], [[1, 0.0], [0.0, 1]]))
    out = stats.summary(["a", "b"])
    assert out["train_loss"] == {"a": 2.0, "b": 4.0}  # (1 + 3) / 2 and 4 / 1
    assert out["weights"] == {"a": 0.75, "b": 1.5}
    assert out["grad_norms"] == {"a": 3.0, "b": 3.0}
    assert out["cosines"] == {"a~b": -0.5}  # only the step with both tasks counts
    assert stats.steps == 2
    assert stats.mean_losses().tolist() == [2.0, 4.0]


def test_epoch_stats_affinity_against_hand_computed_values() -> None:
    """Z[i>j] = lr·‖g_i‖‖g_j‖cos_ij / L_j averaged over the steps with both tasks."""
    stats = EpochStats(2, CPU, affinity_lr=0.1)
    stats.add(step([1.0, 4.0], [True, True], None, [2.0, 3.0], [[1, -0.5], [-0.5, 1]]))
    stats.add(step([3.0, 0.0], [True, False], None, [4.0, 0.0], [[1, 0.0], [0.0, 1]]))
    stats.add(step([2.0, 2.0], [True, True], None, [1.0, 1.0], [[1, 0.5], [0.5, 1]]))
    out = stats.summary(["a", "b"])
    # step 1: G_ab = 2·3·(-0.5) = -3 -> a>b 0.1·(-3)/4, b>a 0.1·(-3)/1; step 3: 0.1·0.5/2 each
    assert out["affinity"]["a>b"] == pytest.approx((-0.075 + 0.025) / 2)
    assert out["affinity"]["b>a"] == pytest.approx((-0.3 + 0.025) / 2)
    assert set(out["affinity"]) == {"a>b", "b>a"}
    assert "affinity" not in EpochStats(2, CPU).summary(["a", "b"])  # only when requested


def test_epoch_stats_nan_and_none_for_a_task_never_labelled() -> None:
    stats = EpochStats(2, CPU)
    stats.add(step([2.0, 0.0], [True, False]))
    assert math.isnan(stats.mean_losses()[1]) and stats.mean_losses()[0] == 2.0
    out = stats.summary(["a", "b"])
    assert out["train_loss"] == {"a": 2.0, "b": None}
    assert out["weights"] is None and out["grad_norms"] is None and out["cosines"] is None


# ------------------------------------------------------------------------------- selection
class FakeTask:
    def __init__(self, name: str, higher: dict[str, bool], primary: str) -> None:
        self.name, self.higher_is_better, self.primary_metric = name, higher, primary


def test_selection_score_one_task_is_its_signed_primary_metric() -> None:
    acc = FakeTask("c", {"acc": True}, "acc")
    err = FakeTask("d", {"mae": False}, "mae")
    assert selection_score({"c": {"acc": 0.8}}, {}, [acc]) == -0.8
    assert selection_score({"d": {"mae": 0.3}}, {}, [err]) == 0.3
    assert selection_score({"d": {"mae": math.nan}}, {}, [err]) == math.inf


def test_selection_score_several_tasks_is_delta_m_against_the_first_epoch() -> None:
    tasks = [FakeTask("c", {"acc": True}, "acc"), FakeTask("d", {"mae": False}, "mae")]
    base = {"c": {"acc": 0.5}, "d": {"mae": 2.0}}
    val = {"c": {"acc": 0.6}, "d": {"mae": 1.0}}
    # Δm = -100/2 * ((0.6-0.5)/0.5 + -(1.0-2.0)/2.0) = -50 * (0.2 + 0.5) = -35
    assert selection_score(val, base, tasks) == pytest.approx(-35.0)
    results, b, directions, skipped = comparable_metrics(
        {"c": {"acc": 0.6}, "d": {"mae": math.nan}}, base, tasks
    )
    assert results == {"c/acc": 0.6} and b == {"c/acc": 0.5} and directions == {"c/acc": True}
    assert skipped == ["d/mae"]


# ------------------------------------------------------------------------------- build
def test_argument_checks_name_the_fix() -> None:
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        check_counts(True, None, 0)
    with pytest.raises(ValueError, match="steps must be None"):
        check_counts(1, 0, 0)
    with pytest.raises(ValueError, match="bn_recalibration"):
        check_counts(1, None, -1)
    tasks = [FakeTask("a", {}, ""), FakeTask("b", {}, "")]
    by_name, trainable = resolve_tasks(tasks, ["b"])
    assert list(by_name) == ["a", "b"] and trainable == ["b"]
    with pytest.raises(ValueError, match="trainable_tasks must be distinct"):
        resolve_tasks(tasks, ["b", "b"])
    with pytest.raises(ValueError, match=r"2 task\(s\) are trained"):
        resolve_method(tb.create("ew", 3), ["a", "b"], None)


def test_mode_auto_follows_the_method_preference() -> None:
    model = nn.Linear(2, 2)
    assert choose_mode(None, tb.create("ew", 2), model) == "param"
    graddrop = tb.create("graddrop", 2)
    assert choose_mode("auto", graddrop, model) == ("rep" if graddrop.prefers_rep_mode else "param")
    with pytest.raises(ValueError, match="mode must be"):
        choose_mode("both", graddrop, model)


# ------------------------------------------------------------------------------- results
def test_run_result_json_round_trip() -> None:
    import json

    from taskbalance.training import RunResult

    result = RunResult(
        best_epoch=2,
        val={"a": {"acc": 0.5}},
        test=None,
        history=[{"epoch": 1}, {"epoch": 2}],
        seconds_per_step=0.25,
        num_parameters=10,
        best_score=-3.5,
        epochs_completed=2,
        method="ew",
        tasks=["a"],
    )
    text = json.dumps(result.to_json())
    back = RunResult.from_json(json.loads(text))
    assert back == result
    assert RunResult.from_json({**result.to_json(), "added_later": 1}) == result


# ------------------------------------------------------------------------------- progress
def test_epoch_line_names_the_run_and_averages_task_losses(capsys, tmp_path) -> None:
    from taskbalance.training.progress import epoch_line, progress_style

    summary = {
        "train_loss": {"a": 1.0, "b": 3.0, "c": None},
        "steps": 5,
        "samples_per_second": 640.4,
        "seconds": 2.25,
    }
    epoch_line(tmp_path / "runs" / "ew", 2, 8, summary, best_epoch=1)
    line = capsys.readouterr().err.strip()
    assert line == (
        "runs/ew: epoch 2/8: 5 steps, mean task loss 2, 640 samples/s, 2.2s; best epoch 1"
    )
    epoch_line(Path("r_nyu"), 2, 8, summary, best_epoch=1)  # a bare relative folder
    assert capsys.readouterr().err.startswith("r_nyu: epoch 2/8")
    assert progress_style(False) == (False, False)
    assert progress_style(True) == (False, True)  # stderr is not a terminal under pytest
