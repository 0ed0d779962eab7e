"""train(config) end to end on the tiny multidigits benchmark: files, resume, seeds, selection."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
import yaml

from taskbalance.training import RunResult, TrainConfig, Trainer, train

TIMING_KEYS = ("seconds_per_step",)


def _strip_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def _results(out_dir):
    return json.loads((out_dir / "results.json").read_text())


class _Killed(Exception):
    pass


def _kill_after(epoch):
    def callback(trainer, record):
        if record["epoch"] == epoch:
            raise _Killed(f"simulated kill after epoch {epoch}")

    return callback


def _scramble_process_state():
    """Make the resumed process state differ: consume every global random number generator."""
    torch.rand(1234)
    np.random.rand(77)  # noqa: NPY002 (the legacy global RNG on purpose)
    random.random()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir):
    """An uninterrupted 3-epoch run shared by the resume and seed tests."""
    out = tmp_path_factory.mktemp("straight")
    config = TrainConfig.from_dict(
        {
            "benchmark": "multidigits",
            "size": "tiny",
            "method": "ew",
            "epochs": 3,
            "steps": 2,
            "batch_size": 16,
            "model_options": {"width": 8, "hidden": 16},
            "cache_dir": str(cache_dir),
            "out_dir": str(out / "run"),
            "progress": False,
            "tensorboard": False,
            "scheduler": "step",
            "scheduler_options": {"step_size": 2},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as the tests it is compared with
    try:
        result = train(config)
    finally:
        torch.set_num_threads(threads)
    return config, result


def test_run_writes_every_file_with_documented_keys(make_config):
    config = make_config("files", labels={"right": 0.5}, epochs=2)
    result = train(config)
    out = config.out_dir
    from pathlib import Path

    out = Path(out)
    for name in (
        "config.yaml",
        "history.jsonl",
        "history.csv",
        "checkpoint.pt",
        "best.pt",
        "results.json",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    assert TrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text())) == config

    results = _results(out)
    for key in (
        "config",
        "best_epoch",
        "val",
        "test",
        "seconds_per_step",
        "num_parameters",
        "history",
    ):
        assert key in results, key
    assert results["config"] == config.to_dict()
    assert results["best_epoch"] in (1, 2)
    assert set(results["val"]) == set(results["test"]) == {"left", "right"}
    assert set(results["val"]["left"]) == {"accuracy"}
    assert results["seconds_per_step"] > 0 and results["num_parameters"] > 0

    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert records == results["history"]
    for i, record in enumerate(records, start=1):
        assert record["epoch"] == i and record["steps"] == 2
        for key in (
            "train_loss",
            "val",
            "test",
            "weights",
            "grad_norms",
            "cosines",
            "seconds_per_step",
            "lr",
            "selection_score",
            "best_epoch",
        ):
            assert key in record, key
        assert set(record["train_loss"]) == {"left", "right"}
        assert record["weights"] == {"left": 1.0, "right": 1.0}  # ew: mean of StepInfo.weights

    with open(out / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert {
        "epoch",
        "train_loss/left",
        "val/left/accuracy",
        "test/right/accuracy",
        "weights/right",
        "seconds_per_step",
    } <= set(rows[0])

    assert isinstance(result, RunResult)
    assert result.best_epoch == results["best_epoch"] and result.val == results["val"]
    assert RunResult.load(out).test == result.test


def test_resume_after_kill_equals_uninterrupted_run(straight, tmp_path):
    config, reference = straight
    killed = config.replace(out_dir=str(tmp_path / "killed"))
    with pytest.raises(_Killed):
        train(killed, callbacks=[_kill_after(1)])
    assert json.loads((tmp_path / "killed" / "history.jsonl").read_text())["epoch"] == 1
    assert not (tmp_path / "killed" / "results.json").exists()

    _scramble_process_state()
    epochs_run = []
    resumed = train(
        killed.replace(resume=True),
        callbacks=[lambda trainer, record: epochs_run.append(record["epoch"])],
    )
    assert epochs_run == [2, 3]  # continued, not retrained from scratch

    a, b = _results(reference.out_dir), _results(tmp_path / "killed")
    assert b["val"] == a["val"] and b["test"] == a["test"]
    assert b["best_epoch"] == a["best_epoch"]
    assert _strip_timing(b["history"]) == _strip_timing(a["history"])
    assert resumed.epochs_completed == 3
    sd_a = torch.load(reference.out_dir / "checkpoint.pt", weights_only=False)["model"]
    sd_b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_one_epoch_then_resume_to_three_equals_three_epochs(straight, tmp_path):
    config, reference = straight
    short = config.replace(
        out_dir=str(tmp_path / "short"), epochs=1, scheduler="none", scheduler_options={}
    )
    long_ref = config.replace(
        out_dir=str(tmp_path / "long"), scheduler="none", scheduler_options={}
    )
    train(short)
    _scramble_process_state()
    resumed = train(short.replace(epochs=3, resume=True))
    straight_run = train(long_ref)
    assert resumed.val == straight_run.val and resumed.test == straight_run.test
    assert _strip_timing(resumed.history) == _strip_timing(straight_run.history)


def test_same_seed_repeats_exactly_and_other_seed_differs(straight, tmp_path):
    config, reference = straight
    again = train(config.replace(out_dir=str(tmp_path / "again")))
    assert _strip_timing(again.history) == _strip_timing(reference.history)
    assert again.test == reference.test
    other = train(config.replace(out_dir=str(tmp_path / "other"), seed=1, epochs=1))
    assert other.history[0]["train_loss"] != reference.history[0]["train_loss"]


def test_resume_without_checkpoint_is_a_clear_error(make_config):
    with pytest.raises(FileNotFoundError, match="no checkpoint.*resume=False"):
        train(make_config("nothing", resume=True))


def test_resume_with_different_config_names_the_keys(straight, tmp_path):
    import shutil

    config, reference = straight
    shutil.copytree(reference.out_dir, tmp_path / "copy")
    changed = config.replace(out_dir=str(tmp_path / "copy"), resume=True, lr=0.5, batch_size=8)
    with pytest.raises(ValueError) as err:
        train(changed)
    msg = str(err.value)
    assert "lr" in msg and "batch_size" in msg and "0.5" in msg
    saved = yaml.safe_load((tmp_path / "copy" / "config.yaml").read_text())
    assert saved["lr"] == config.lr  # a refused resume does not overwrite the run's config
    assert "seed" not in msg and "out_dir" not in msg
    # epochs may not change when a scheduler's shape depends on them
    with pytest.raises(ValueError, match="epochs"):
        train(config.replace(out_dir=str(tmp_path / "copy"), resume=True, epochs=5))


def test_resume_of_finished_run_returns_its_results(straight, tmp_path):
    import shutil

    config, reference = straight
    shutil.copytree(reference.out_dir, tmp_path / "done")
    again = train(config.replace(out_dir=str(tmp_path / "done"), resume=True))
    assert again.test == reference.test and again.best_epoch == reference.best_epoch


def test_selection_uses_validation_never_test(make_config, monkeypatch):
    # Validation is best at epoch 2; test is best at epoch 3. The run must report epoch 2.
    val_acc = {1: 0.3, 2: 0.8, 3: 0.5}
    test_acc = {1: 0.9, 2: 0.2, 3: 0.99}

    def fake_evaluate(self, loader, desc="eval"):
        table = val_acc if desc == "val" else test_acc
        acc = table[self.epoch]
        return {"left": {"accuracy": acc}, "right": {"accuracy": acc / 2}}

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)
    result = train(make_config("select", epochs=3, steps=1))
    assert result.best_epoch == 2
    assert result.val == {"left": {"accuracy": 0.8}, "right": {"accuracy": 0.4}}
    assert result.test == {"left": {"accuracy": 0.2}, "right": {"accuracy": 0.1}}
    assert [r["best_epoch"] for r in result.history] == [1, 2, 2]


def test_single_task_baseline_trains_only_that_task(make_config):
    result = train(make_config("single", tasks=["right"], epochs=1, steps=1))
    assert set(result.val) == {"right"}
    assert set(result.history[0]["train_loss"]) == {"right"}
    full = train(make_config("both", epochs=1, steps=1))
    assert result.num_parameters < full.num_parameters


def test_best_pt_holds_the_weights_of_the_best_validation_epoch(make_config):
    states = {}

    def keep(trainer, record):
        states[record["epoch"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    config = make_config("best", epochs=3)
    result = train(config, callbacks=[keep])
    from pathlib import Path

    best = torch.load(Path(config.out_dir) / "best.pt", weights_only=True)
    expected = states[result.best_epoch]
    assert set(best) == set(expected)
    assert all(torch.equal(best[k], expected[k]) for k in expected)
    assert not [p.name for p in Path(config.out_dir).iterdir() if p.name.startswith(".")]


def test_kill_between_best_weights_and_checkpoint_keeps_best_pt_consistent(
    make_config, monkeypatch
):
    """A kill after an epoch's best weights are written but before its checkpoint must not leave
    best.pt ahead of the checkpoint; the resumed run ends with the uninterrupted run's best.pt."""
    from pathlib import Path

    real_evaluate = Trainer.evaluate
    val_acc = {1: 0.3, 2: 0.8, 3: 0.5}  # validation makes epoch 2 the best

    def evaluate(self, loader, desc="eval"):
        metrics = real_evaluate(self, loader, desc)
        if desc == "val":
            metrics["left"]["accuracy"] = val_acc[self.epoch]
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    reference = make_config("reference", epochs=3)
    assert train(reference).best_epoch == 2
    killed = make_config("killed", epochs=3)
    real_save = Trainer.save_checkpoint

    def save_or_die(self, path):
        if self.epoch == 2:
            raise _Killed("killed before the checkpoint of epoch 2")
        return real_save(self, path)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_or_die)
    with pytest.raises(_Killed):
        train(killed)
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    out = Path(killed.out_dir)
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 1
    first = torch.load(out / "best.pt", weights_only=True)
    assert all(torch.equal(first[k], saved["model"][k]) for k in saved["model"])  # epoch 1's

    train(killed.replace(resume=True))
    a = torch.load(Path(reference.out_dir) / "best.pt", weights_only=True)
    b = torch.load(out / "best.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".best")]


def test_resume_of_finished_run_rewrites_stale_history_files(make_config, monkeypatch):
    from pathlib import Path

    from taskbalance.training.logging import HistoryWriter

    config = make_config("stale", epochs=2)
    real_write = HistoryWriter.write

    def write_or_die(self, history, **kwargs):
        if len(history) == 2:
            raise _Killed("killed after the last checkpoint, before the history files")
        return real_write(self, history, **kwargs)

    monkeypatch.setattr(HistoryWriter, "write", write_or_die)
    with pytest.raises(_Killed):
        train(config)
    monkeypatch.undo()
    out = Path(config.out_dir)
    assert len((out / "history.jsonl").read_text().splitlines()) == 1
    result = train(config.replace(resume=True))
    lines = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines == _results(out)["history"] == json.loads(json.dumps(result.history))
    with open(out / "history.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_history_lr_is_the_rate_each_epoch_trained_with(straight):
    """StepLR(step_size=2, gamma=0.1) from lr 1e-3: epochs 1-2 train at 1e-3, epoch 3 at 1e-4
    (the record is read before the scheduler steps into the next epoch)."""
    _, result = straight
    lrs = [record["lr"] for record in result.history]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4], rel=1e-12)
