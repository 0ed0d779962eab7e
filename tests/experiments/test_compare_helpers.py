"""Helpers of compare and tune that need no training."""

from __future__ import annotations

import shlex

import pytest

import taskbalance
from taskbalance.experiments import compare, tune


@pytest.fixture(scope="module")
def info():
    return compare.task_info("multidigits")


def test_task_info_from_the_benchmark(info):
    assert info.names == ["left", "right"]
    assert info.primary == {"left": "accuracy", "right": "accuracy"}
    assert info.higher_is_better == {"left": {"accuracy": True}, "right": {"accuracy": True}}


def test_resolve_methods():
    notes: list[str] = []
    standard = compare.resolve_methods(None, 2, notes.append)
    registered = set(taskbalance.available_methods())
    assert standard == [m for m in compare.STANDARD_METHODS if m in registered]
    assert bool(notes) == (len(standard) < len(compare.STANDARD_METHODS))
    everything = compare.resolve_methods("all", 2)
    assert "static" not in everything  # needs weights
    assert set(everything) == registered - {"static"}
    assert compare.resolve_methods(" ew, pcgrad ", 2) == ["ew", "pcgrad"]
    with pytest.raises(ValueError, match="nosuch.*available: .*ew"):
        compare.resolve_methods("ew,nosuch", 2)
    with pytest.raises(ValueError, match="twice"):
        compare.resolve_methods("ew,ew", 2)


def test_resolve_methods_all_takes_a_method_usable_with_its_options():
    everything = compare.resolve_methods("all", 2, options={"static": {"weights": [1.0, 3.0]}})
    assert set(everything) == set(taskbalance.available_methods())


def test_compare_refuses_double_sampling_in_rep_mode_before_training(tmp_path):
    # known from the settings alone: refused before the first run (a baseline) trains, with
    # compare's fix; with that fix the plan is accepted
    out = tmp_path / "never"
    settings = compare.CompareSettings(
        methods="ew,modo", seeds=[0], epochs=1, steps=1, size="tiny", out_dir=out,
        extra={"mode": "rep"},
    )  # fmt: skip
    fix = r"--option modo\.sampling=single on the taskbalance compare command line"
    with pytest.raises(ValueError, match=rf"method 'modo' .*rep mode.*{fix}"):
        compare.run_compare(settings, log=lambda _: None)
    assert not out.exists()
    base = compare.base_config(settings)
    options = {"modo": {"sampling": "single"}}
    plan = compare._plan(out, base, [0], ["left", "right"], ["ew", "modo"], options, False)
    assert [cfg.get("method_options") for _, _, cfg in plan] == [None, None, None, options["modo"]]


def test_parse_pareto(info):
    assert compare.parse_pareto(None, info) == (("left", "accuracy"), ("right", "accuracy"))
    assert compare.parse_pareto("right,left.accuracy", info) == (
        ("right", "accuracy"),
        ("left", "accuracy"),
    )
    with pytest.raises(ValueError, match="two metrics"):
        compare.parse_pareto("left", info)
    with pytest.raises(ValueError, match="'left.rmse'.*left.accuracy"):
        compare.parse_pareto("left.rmse,right", info)
    single = compare.TaskInfo(["d"], {"d": "abs"}, {"d": {"abs": False, "rel": False}})
    assert compare.parse_pareto(None, single) == (("d", "abs"), ("d", "rel"))
    lonely = compare.TaskInfo(["c"], {"c": "acc"}, {"c": {"acc": True}})
    assert compare.parse_pareto(None, lonely) is None


def test_normalise_weights():
    assert tune.normalise_weights([2.0, 2.0]) == [1.0, 1.0]
    assert tune.normalise_weights([1.0, 3.0, 2.0]) == pytest.approx([0.5, 1.5, 1.0])
    for bad in ([], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError):
            tune.normalise_weights(bad)


def test_train_command_round_trips():
    settings = tune.TuneSettings(benchmark="multidigits", epochs=3, steps=None, size="tiny")
    command = tune.train_command(settings, [0.25, 1.75])
    assert command == (
        "taskbalance train --benchmark multidigits --method static "
        "--option weights=0.25,1.75 --epochs 3 --size tiny"
    )
    assert shlex.split(command)[7] == "weights=0.25,1.75"


def test_train_command_weights_read_back_exactly():
    import yaml

    settings = tune.TuneSettings(benchmark="multidigits")
    weights = tune.normalise_weights([0.123456789, 1.0, 9.87654321, 1e-7])
    option = shlex.split(tune.train_command(settings, weights))[7]
    # --option reads each comma-separated value as YAML
    assert [yaml.safe_load(v) for v in option.removeprefix("weights=").split(",")] == weights
    assert yaml.safe_load(tune._exact(1e-05)) == 1e-05  # YAML reads "1e-05" as a string


def test_run_or_reuse_refuses_a_finished_run_with_another_mode(tmp_path):
    config = {
        "benchmark": "multidigits",
        "size": "tiny",
        "method": "pcgrad",
        "mode": "param",
        "epochs": 1,
        "steps": 1,
        "batch_size": 16,
        "model_options": {"width": 8, "hidden": 16},
        "cache_dir": str(tmp_path / "cache"),
        "out_dir": str(tmp_path / "run"),
        "progress": False,
        "tensorboard": False,
    }
    first = compare.run_or_reuse(config, log=lambda _: None)
    lines: list[str] = []
    again = compare.run_or_reuse(config, log=lines.append)
    assert again == first and "reused" in lines[0]
    with pytest.raises(ValueError, match="other settings.*mode: 'param' there, 'rep' now"):
        compare.run_or_reuse({**config, "mode": "rep"}, log=lambda _: None)


def test_resolve_jobs_one_thread_each_on_cpu(monkeypatch):
    import torch

    from taskbalance.experiments.compare import resolve_jobs

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert resolve_jobs(None, "cpu", 39) == (4, 1)
    assert resolve_jobs(None, "cpu", 3) == (3, 1)  # never more jobs than runs
    assert resolve_jobs(2, "cpu", 39) == (2, 2)
    assert resolve_jobs(None, "cuda", 39) == (1, 4)
    with pytest.raises(ValueError, match="jobs"):
        resolve_jobs(0, "cpu", 3)


def _tune_with_values(tmp_path, monkeypatch, trial_values, trials):
    """``run_tune`` whose runs are replaced: baselines at 0.5, trial k's every metric at
    ``trial_values[k]``."""
    info = compare.task_info("multidigits", "tiny")
    values = iter(trial_values)

    def fake_run(config, *, label="", log=print):
        if config["method"] == "ew":
            value = 0.5
        else:
            value = next(values)
        return {"val": {t: {m: value for m in info.higher_is_better[t]} for t in config.get(
            "tasks") or info.names}}

    monkeypatch.setattr(tune, "run_or_reuse", fake_run)
    settings = tune.TuneSettings(benchmark="multidigits", size="tiny", trials=trials,
                                 out_dir=tmp_path / "tune")  # fmt: skip
    return tune.run_tune(settings, log=lambda line: None)


def test_tune_marks_a_trial_of_nan_metrics_failed_and_says_when_none_finished(
    tmp_path, monkeypatch
):
    import optuna
    from optuna.trial import TrialState

    nan = float("nan")
    with pytest.raises(ValueError, match=r"none of the 2 trial\(s\) .* finite validation Δm%"):
        _tune_with_values(tmp_path, monkeypatch, [nan, nan], trials=2)
    storage = f"sqlite:///{tmp_path / 'tune' / 'tune.db'}"
    study = optuna.load_study(study_name="multidigits-static-weights", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    # the next call runs one more (no finished trial yet): metrics 0.6 against 0.5, higher is
    # better: Δm% = -(0.6 - 0.5) / 0.5 x 100 = -20
    result = _tune_with_values(tmp_path, monkeypatch, [0.6], trials=1)
    assert (result.trials, result.best_trial) == (1, 2)
    assert result.best_value == pytest.approx(-20.0)
    # a failed trial among finished ones: the study goes on, the best stays
    result = _tune_with_values(tmp_path, monkeypatch, [nan], trials=2)
    assert (result.trials, result.best_trial) == (1, 2)
    assert [t.state for t in study.trials][3] == TrialState.FAIL
