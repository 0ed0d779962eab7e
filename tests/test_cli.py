"""The ``taskbalance`` command line, end to end through ``main([...])`` on tiny benchmarks."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from _cli_errors import user_error as _user_error

import taskbalance
from taskbalance.cli import main
from taskbalance.experiments import report

TINY = ["--size", "tiny", "--epochs", "1", "--steps", "2"]


@pytest.fixture(scope="module", autouse=True)
def _benchmark_cache(tmp_path_factory):
    """Generated benchmarks go to a temporary cache, not the user's."""
    old = os.environ.get("TASKBALANCE_CACHE")
    os.environ["TASKBALANCE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TASKBALANCE_CACHE", None)
    else:
        os.environ["TASKBALANCE_CACHE"] = old




# ---------------------------------------------------------------------------------- help, methods
@pytest.mark.parametrize(
    "command", [[], ["methods"], ["train"], ["compare"], ["tune"], ["annotate"]]
)
def test_help_on_every_command(capsys, command):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: taskbalance")
    if command:
        assert command[0] in out.splitlines()[0]


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(taskbalance.available_methods())
    for name, line in rows.items():
        info = taskbalance.method_info(name)
        assert line.split()[1] == info.kind
        if info.paper:
            assert info.paper in line


# ---------------------------------------------------------------------------------- train
def test_train_one_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--benchmark", "multidigits", "--method", "pcgrad", *TINY, "--out", str(out),
            "--affinity", "--nonfinite", "skip"]  # fmt: skip
    assert main(argv) == 0
    assert f"results: {out / 'results.json'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method"] == "pcgrad" and results["config"]["affinity"] is True
    affinity = results["history"][0]["affinity"]  # --affinity logs TAG affinity per epoch
    assert set(affinity) == {"left>right", "right>left"}
    assert results["config"]["nonfinite"] == "skip"  # --nonfinite: the config key
    assert results["history"][0]["nonfinite_steps"] == 0
    assert results["config"]["steps"] == 2 and results["config"]["size"] == "tiny"
    assert set(results["test"]) == {"left", "right"}


def test_train_config_file_flags_override_and_resume(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"benchmark: multidigits\nmethod: pcgrad\nepochs: 5\nsteps: 1\nsize: tiny\n"
        f"lr: 0.002\nbatch_size: 16\nout_dir: {out}\n"
    )
    # flags override the file: method, epochs
    assert main(["train", "--config", str(config), "--method", "ew", "--epochs", "1"]) == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert (cfg["method"], cfg["epochs"], cfg["lr"], cfg["batch_size"]) == ("ew", 1, 0.002, 16)
    # --resume continues the same run for one more epoch
    argv = ["train", "--config", str(config), "--method", "ew", "--epochs", "2", "--resume"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2]


def test_train_method_options(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--method", "static", "--option", "weights=0.5,1.5", *TINY, "--out", str(out)]
    assert main(argv) == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["method_options"] == {"weights": [0.5, 1.5]}


def test_train_user_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "never")]
    _user_error(capsys, ["train", "--method", "nosuch", *TINY, *out], "'method'", "nosuch", "ew")
    _user_error(capsys, ["train", "--benchmark", "nosuch", *TINY, *out], "benchmark", "scenes")
    _user_error(capsys, ["train", "--method", "ew", "--option", "foo=1", *out], "foo")
    _user_error(capsys, ["train", "--method", "static", *TINY, *out], "weights")
    _user_error(capsys, ["train", "--epochs", "0"], "--epochs", ">= 1")
    _user_error(capsys, ["train", "--size", "huge"], "--size", "tiny")
    _user_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "missing.yaml")

    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("method: ew\nlearning_rate: 0.1\n")
    line = _user_error(capsys, ["train", "--config", str(bad_key)], "'learning_rate'", "lr")
    assert "valid keys" in line
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("optimizer: rmsprop\n")
    _user_error(capsys, ["train", "--config", str(bad_value)], "'optimizer'", "rmsprop", "'adam'")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    _user_error(capsys, ["train", "--config", str(not_mapping)], "mapping")
    assert not (tmp_path / "never").exists()


def test_a_double_sampling_refusal_names_the_command_line_fix(tmp_path, capsys):
    # modo samples three sub-batches a step by default, which rep mode cannot take: the error
    # named only taskbalance.create(..., sampling='single'), not the flag that fixes the command
    rep = tmp_path / "rep.yaml"
    rep.write_text("mode: rep\n")
    argv = ["train", "--method", "modo", "--config", str(rep), *TINY]
    argv += ["--out", str(tmp_path / "never")]
    _user_error(capsys, argv, "rep mode", "--option sampling=single", "method_options")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    argv = ["compare", "--methods", "ew,pcgrad", "--seeds", "2", *TINY, "--out", str(out)]
    assert main(argv) == 0
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_compare_writes_report(compared):
    out = compared
    for method in ("ew", "pcgrad"):
        for seed in (0, 1):
            assert (out / "runs" / method / f"seed{seed}" / "results.json").exists()
    for task in ("left", "right"):
        run = _load(out / "baselines" / task / "seed0" / "results.json")
        assert run["config"]["tasks"] == [task] and run["config"]["method"] == "ew"
    summary = _load(out / "results.json")
    assert len(summary["runs"]) == 4 and len(summary["baselines"]) == 4
    assert {r["method"] for r in summary["leaderboard"]["rows"]} == {"ew", "pcgrad"}
    assert set(summary["plots"]) == {"validation_curves", "task_weights", "pareto", "delta_m"}
    for path in summary["plots"].values():
        image = mpimg.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image[..., :3].std() > 0.02


def _leaderboard_lines(out: Path) -> list[str]:
    """The leaderboard's lines, without the negative-transfer section that follows it."""
    text = (out / "leaderboard.md").read_text()
    return text.split("\n## Negative transfer")[0].splitlines()


def test_compare_delta_column_matches_stored_runs(compared):
    """Δm% recomputed from the stored run files equals the leaderboard's (json and markdown)."""
    out = compared
    hib = {"left": {"accuracy": True}, "right": {"accuracy": True}}
    baseline = {
        task: {
            "accuracy": sum(
                _load(out / "baselines" / task / f"seed{k}" / "results.json")["test"][task][
                    "accuracy"
                ]
                for k in (0, 1)
            )
            / 2
        }
        for task in ("left", "right")
    }
    rows = {r["method"]: r for r in _load(out / "results.json")["leaderboard"]["rows"]}
    table = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in _leaderboard_lines(out)
        if line.startswith("| ") and "Δm%" not in line
    }
    assert set(table) == {"single-task", "ew", "pcgrad"}
    for method in ("ew", "pcgrad"):
        deltas = [
            report.delta(
                _load(out / "runs" / method / f"seed{k}" / "results.json")["test"], baseline, hib
            )
            for k in (0, 1)
        ]
        mean, std = report.mean_std(deltas)
        assert rows[method]["delta_m"]["mean"] == pytest.approx(mean)
        assert rows[method]["delta_m"]["std"] == pytest.approx(std)
        assert table[method][3] == f"{mean:.2f} ± {std:.2f}"
    assert table["ew"][-1] == "1.00x"


def test_compare_params_column_and_sharing_line_match_stored_runs(compared):
    """The params column is each run's ``num_parameters`` (single-task: the sum over its
    networks), and the sharing line's saved fraction is 1 - multi-task / sum of single-task."""
    out = compared
    lines = _leaderboard_lines(out)
    header = next(line for line in lines if line.startswith("| ") and "Δm%" in line)
    col = [c.strip() for c in header.split("|")[1:-1]].index("params")
    table = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in lines
        if line.startswith("| ") and "Δm%" not in line
    }
    stored = {
        method: {
            _load(out / "runs" / method / f"seed{k}" / "results.json")["num_parameters"]
            for k in (0, 1)
        }
        for method in ("ew", "pcgrad")
    }
    for method, counts in stored.items():
        assert len(counts) == 1
        assert int(table[method][col].replace(",", "")) == next(iter(counts))
    singles = sum(
        _load(out / "baselines" / task / "seed0" / "results.json")["num_parameters"]
        for task in ("left", "right")
    )
    assert int(table["single-task"][col].replace(",", "")) == singles
    mtl = next(iter(stored["ew"]))
    saved = 1 - mtl / singles
    sharing_lines = [line for line in lines if line.startswith("Sharing saves ")]
    assert len(sharing_lines) == 1
    line = sharing_lines[0]
    assert line.startswith(f"Sharing saves {100 * saved:.1f}% of the parameters ")
    assert f"({mtl:,} in the multi-task model vs {singles:,} in 2 single-task models)" in line
    assert "of the inference time" in line and "per batch of" in line
    sharing = _load(out / "results.json")["sharing"]
    assert sharing["multitask_parameters"] == mtl
    assert sharing["single_task_parameters"] == singles
    assert sharing["parameters_saved_fraction"] == pytest.approx(saved)
    assert sharing["multitask_seconds"] > 0 and sharing["single_task_seconds"] > 0
    assert sharing["time_saved_fraction"] == pytest.approx(
        1 - sharing["multitask_seconds"] / sharing["single_task_seconds"]
    )


def test_compare_reuses_finished_runs(compared, capsys):
    out = compared
    argv = ["compare", "--methods", "ew,pcgrad", "--seeds", "2", *TINY, "--out", str(out)]
    stamp = (out / "runs" / "ew" / "seed0" / "results.json").stat().st_mtime_ns
    (out / "runs" / "pcgrad" / "seed1" / "results.json").unlink()  # as if interrupted
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert log.count(": reused (") == 7
    assert "pcgrad seed1: trained" in log or "pcgrad seed1: resumed and trained" in log
    assert (out / "runs" / "ew" / "seed0" / "results.json").stat().st_mtime_ns == stamp
    # other settings into the same folder: refused, nothing mixed
    changed = ["compare", "--methods", "ew", "--seeds", "1", "--size", "tiny", "--epochs", "1"]
    _user_error(capsys, [*changed, "--steps", "3", "--out", str(out)], "other settings", "steps")


def test_compare_user_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "never")]
    _user_error(capsys, ["compare", "--methods", "ew,nosuch", *TINY, *out], "nosuch", "pcgrad")
    _user_error(capsys, ["compare", "--benchmark", "nosuch", *TINY, *out], "nosuch", "multidigits")
    _user_error(capsys, ["compare", "--pareto", "left.nosuch,right", *TINY, *out], "left.nosuch")
    _user_error(capsys, ["compare", "--seeds", "x"], "--seeds")
    _user_error(capsys, ["compare", "--methods", "ew", "--device", "tpu", *TINY, *out], "'device'")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------- tune
def test_tune_continues_the_stored_study(tmp_path, capsys):
    import optuna

    out = tmp_path / "tune"
    argv = ["tune", "--benchmark", "multidigits", *TINY, "--out", str(out)]
    assert main([*argv, "--trials", "2"]) == 0
    first = capsys.readouterr().out
    storage = f"sqlite:///{out.resolve() / 'tune.db'}"
    assert (out / "tune.db").exists()
    assert optuna.study.get_all_study_names(storage) == ["multidigits-static-weights"]
    study = optuna.load_study(study_name="multidigits-static-weights", storage=storage)
    assert len(study.trials) == 2
    assert study.trials[0].params == {"w_left": 1.0, "w_right": 1.0}  # equal weights first

    assert main([*argv, "--trials", "3"]) == 0  # continues: one more trial
    second = capsys.readouterr().out
    assert "2 finished trial(s), running 1 more" in second
    assert "single-task left: reused" in second  # baselines trained once
    assert optuna.study.get_all_study_names(storage) == ["multidigits-static-weights"]
    study = optuna.load_study(study_name="multidigits-static-weights", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert main([*argv, "--trials", "3"]) == 0  # nothing left to do
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == 3

    # the printed command trains with the best weights
    command = next(
        line.strip() for line in capsys.readouterr().out.splitlines() if "taskbalance train" in line
    )
    assert "--method static --option weights=" in command
    assert "taskbalance train" in first
    best = _load(out / "best_weights.json")
    assert best["trials"] == 3 and best["command"] == command
    from taskbalance.experiments.tune import TuneResult

    typed = TuneResult.load(out)  # the typed outcome reads the file back, key for key
    assert typed.to_json() == best and typed.best_weights == best["weights"]
    weights = best["weights"]
    assert sum(weights.values()) == pytest.approx(2.0)
    run = tmp_path / "best"
    assert main([*shlex.split(command)[1:], "--out", str(run)]) == 0
    cfg = _load(run / "results.json")["config"]
    assert cfg["method"] == "static"
    assert cfg["method_options"]["weights"] == pytest.approx(list(weights.values()), rel=1e-3)


def test_tune_user_errors(tmp_path, capsys):
    _user_error(capsys, ["tune"], "--benchmark")
    _user_error(capsys, ["tune", "--benchmark", "multidigits", "--trials", "0"], "--trials")
    out = ["--out", str(tmp_path / "t")]
    _user_error(capsys, ["tune", "--benchmark", "nosuch", *TINY, *out], "nosuch")
    # a study reloaded with other settings is refused
    assert main(["tune", "--benchmark", "multidigits", *TINY, *out, "--trials", "1"]) == 0
    capsys.readouterr()
    changed = ["tune", "--benchmark", "multidigits", "--size", "tiny", "--epochs", "1"]
    _user_error(capsys, [*changed, "--steps", "1", *out, "--trials", "2"], "other settings")


# ---------------------------------------------------------------------------------- partial labels
def test_annotate_then_train_with_pseudo_labels(tmp_path, capsys):
    from taskbalance.data import load_benchmark
    from taskbalance.experiments.annotate import PseudoLabelStore

    out = tmp_path / "ann"
    argv = ["annotate", "--benchmark", "multidigits", "--labels", "left=0.3", *TINY]
    assert main([*argv, "--threshold", "0.0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    store_path = out / "pseudo_labels.pt"
    assert f"pseudo-labels: {store_path}" in printed
    store = PseudoLabelStore.load(store_path)
    bench = load_benchmark("multidigits", size="tiny", labels={"left": 0.3})
    labelled = {i for i in range(len(bench.train)) if bool(bench.train[i][2]["left"])}
    kept = set(store.labels["left"].indices.tolist())
    # threshold 0 keeps a pseudo-label for every unlabelled sample, and only for those.
    assert kept == set(range(len(bench.train))) - labelled

    run = tmp_path / "run"
    argv = ["train", "--benchmark", "multidigits", "--labels", "left=0.3", *TINY]
    assert main([*argv, "--pseudo-labels", str(store_path), "--out", str(run)]) == 0
    saved = json.loads((run / "results.json").read_text())
    assert saved["config"]["pseudo_labels"] == str(store_path)
    assert saved["config"]["labels"] == {"left": 0.3}


def test_compare_labels_runs_the_workflows(tmp_path, capsys):
    out = tmp_path / "wf"
    argv = ["compare", "--benchmark", "multidigits", "--labels", "left=0.5", *TINY]
    assert main([*argv, "--workflows", "masked,staged", "--out", str(out)]) == 0
    table = (out / "workflows.md").read_text()
    for row in ("full labels", "masked", "staged"):
        assert f"| {row}" in table
    assert "annotated" not in table


def test_partial_label_user_errors(tmp_path, capsys):
    base = ["train", "--benchmark", "multidigits", *TINY, "--out", str(tmp_path / "x")]
    _user_error(capsys, [*base, "--labels", "left=1.5"], "left", "(0, 1]")
    _user_error(capsys, [*base, "--labels", "nose=0.5"], "nose")
    _user_error(capsys, ["compare", "--workflows", "masked", *TINY], "--labels")
    # flags of the method comparison are refused with --labels instead of silently ignored
    wf = ["compare", "--labels", "left=0.5", *TINY, "--out", str(tmp_path / "wf")]
    _user_error(capsys, [*wf, "--pareto", "left,right"], "--pareto")
    _user_error(capsys, [*wf, "--seeds", "2"], "--seeds")
    _user_error(capsys, [*wf, "--methods", "ew,pcgrad"], "--methods")
    _user_error(capsys, [*wf, "--finetune-rounds", "-1"], "--finetune-rounds", ">= 0")
    out = ["--out", str(tmp_path / "cmp")]
    _user_error(capsys, ["compare", "--finetune-rounds", "1", *TINY, *out], "--labels")
    assert not (tmp_path / "wf").exists() and not (tmp_path / "cmp").exists()


def test_compare_labels_uses_the_given_method(tmp_path):
    out = tmp_path / "wf"
    argv = ["compare", "--benchmark", "multidigits", "--labels", "left=0.5", *TINY]
    assert main([*argv, "--workflows", "masked", "--methods", "pcgrad", "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["method"] == "pcgrad"
    assert "method pcgrad" in (out / "workflows.md").read_text()


def test_compare_refuses_an_uncreatable_method_before_training(tmp_path, capsys):
    out = tmp_path / "cmp"
    _user_error(capsys, ["compare", "--methods", "static", *TINY, "--out", str(out)], "weights")
    assert not out.exists()  # not even the single-task baselines were trained


def test_compare_option_reaches_its_method_runs_only(tmp_path, capsys, monkeypatch):
    # compare took no method options: static (weights) and cagrad with another c could not be
    # compared from the command line
    import taskbalance.experiments.timing as timing

    timed: dict = {}
    measure = timing.measure_step_times

    def spy(configs, **kwargs):
        timed.update(configs)
        return measure(configs, **kwargs)

    monkeypatch.setattr(timing, "measure_step_times", spy)
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "static,ew", "--seeds", "1", *TINY, "--out", str(out)]
    assert main([*argv, "--option", "static.weights=0.25,1.75"]) == 0
    static = _load(out / "runs" / "static" / "seed0" / "results.json")
    assert static["config"]["method_options"] == {"weights": [0.25, 1.75]}
    for epoch in static["history"]:  # the run's weights are the given ones
        assert epoch["weights"] == pytest.approx({"left": 0.25, "right": 1.75})
    assert _load(out / "runs" / "ew" / "seed0" / "results.json")["config"]["method_options"] == {}
    for task in ("left", "right"):
        baseline = _load(out / "baselines" / task / "seed0" / "results.json")
        assert baseline["config"]["method_options"] == {}
    assert timed["static"]["method_options"] == {"weights": [0.25, 1.75]}  # timed as trained
    assert "method_options" not in timed["ew"]
    saved = _load(out / "results.json")
    assert saved["method_options"] == {"static": {"weights": [0.25, 1.75]}}
    assert saved["leaderboard"]["method_options"] == saved["method_options"]
    assert "Method options (every seed's run): static weights=[0.25, 1.75]." in (
        out / "leaderboard.md"
    ).read_text()
    # another value of the option is another run: refused, the stored run is not reused
    stamp = (out / "runs" / "static" / "seed0" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    again = [*argv, "--option", "static.weights=1,1", "--no-timing"]
    _user_error(capsys, again, "other settings", "method_options", "--overwrite")
    assert (out / "runs" / "static" / "seed0" / "results.json").stat().st_mtime_ns == stamp


def test_compare_option_user_errors(tmp_path, capsys):
    base = ["compare", "--methods", "cagrad,ew", *TINY, "--out", str(tmp_path / "never")]
    _user_error(capsys, [*base, "--option", "c=0.2"], "METHOD.KEY=VALUE", "'c=0.2'")
    _user_error(capsys, [*base, "--option", "pcgrad.seed=1"], "'pcgrad'", "--methods")
    _user_error(capsys, [*base, "--option", "cagrad.foo=1"], "cagrad.foo", "'foo'", "c,")
    _user_error(capsys, [*base, "--option", "cagrad.c=-1"], "cagrad.c=-1", ">= 0")
    twice = ["--option", "cagrad.c=0.1", "--option", "cagrad.c=0.2"]
    _user_error(capsys, [*base, *twice], "cagrad.c", "twice")
    assert not (tmp_path / "never").exists()


def test_compare_refuses_double_sampling_under_torchrun_before_training(
    tmp_path, capsys, monkeypatch
):
    # modo and sdmgrad sample three sub-batches a step by default, which a distributed step
    # cannot take: compare --nproc trained every earlier run, then stopped at modo's naming
    # train's --option, which compare did not take
    import taskbalance.training.distributed_run as distributed_run

    monkeypatch.setattr(distributed_run, "in_process_group", lambda: True)  # as under torchrun
    out = tmp_path / "never"
    argv = ["compare", "--methods", "ew,modo,sdmgrad", *TINY, "--out", str(out)]
    fix = "--option modo.sampling=single --option sdmgrad.sampling=single on the taskbalance "
    both = "methods 'modo', 'sdmgrad': sampling="
    line = _user_error(capsys, argv, both, "distributed step", fix)
    assert "train command line" not in line
    one = [*argv, "--option", "modo.sampling=single"]
    line = _user_error(capsys, one, "method 'sdmgrad'", "--option sdmgrad.sampling=single")
    assert "'modo'" not in line
    assert not out.exists()  # not even the single-task baselines were trained


def test_compare_labels_takes_the_method_options(tmp_path, capsys):
    # the partial-label workflows' batches label different tasks in their three parts: modo
    # trained the fully labelled reference, then stopped in the masked run
    out = tmp_path / "wf"
    argv = ["compare", "--labels", "left=0.5", "--workflows", "masked", "--methods", "modo"]
    argv += [*TINY, "--out", str(out)]
    fix = "--option modo.sampling=single on the taskbalance compare --labels command line"
    _user_error(capsys, argv, "'modo'", "partial labels of ['left']", fix)
    assert not out.exists()
    _user_error(capsys, [*argv, "--option", "ew.seed=1"], "ew", "modo.KEY=VALUE")
    assert main([*argv, "--option", "modo.sampling=single"]) == 0
    saved = _load(out / "results.json")
    assert saved["settings"]["method_options"] == {"sampling": "single"}
    assert "method modo sampling='single'" in (out / "workflows.md").read_text()
    for run in ("full", "masked"):
        config = _load(out / "runs" / run / "results.json")["config"]
        assert config["method_options"] == {"sampling": "single"}, run


def test_train_steps_and_all_steps_conflict(capsys):
    _user_error(capsys, ["train", "--steps", "2", "--all-steps"], "--all-steps")


def test_option_values_in_exponent_form_are_numbers():
    # --option lr-like values: PyYAML alone reads 1e-3 as a string, which a method refuses
    from taskbalance.cli._common import key_value

    assert key_value("c=1e-3") == ("c", 0.001)
    assert key_value("weights=1e-1,2E0") == ("weights", [0.1, 2.0])
    assert key_value("sampling=single") == ("sampling", "single")
