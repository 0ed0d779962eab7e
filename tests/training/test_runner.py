"""The one runner: reuse, resume and refusal of :func:`run`, frozen parts and trainable tasks from
the config, handed-over inputs, and the Trainer that timing builds through it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from taskbalance.training import RunInputs, RunResult, run
from taskbalance.training.runner import build_trainer


class _Stop(Exception):
    pass


def fake_nyu_run(tmp_path: Any) -> tuple[Any, dict[str, Any]]:
    """A fake NYUv2 folder `tmp_path/nyu` and a one-step run config on it (into `tmp_path/run`)."""
    from taskbalance.data.real.fake import write_fake_dataset

    root = write_fake_dataset("nyuv2", tmp_path / "nyu", train=3, test=2, size=(8, 8))
    config = {
        "dataset": "nyuv2", "data_root": str(root), "model_options": {"width": 2, "depth": 1},
        "batch_size": 2, "epochs": 1, "steps": 1, "progress": False, "tensorboard": False,
        "out_dir": str(tmp_path / "run"),
    }  # fmt: skip
    return root, config


def _stop_after(epoch: int):
    def callback(trainer, record) -> None:
        if record["epoch"] == epoch:
            raise _Stop

    return callback


def _same(a: RunResult, b: RunResult) -> bool:
    """Equal apart from wall-clock measurements and the folder."""

    def plain(r: RunResult) -> dict:
        data = json.loads(json.dumps(r.to_dict()))
        data.pop("seconds_per_step")
        data["config"].pop("out_dir")
        for row in data["history"]:
            for key in [k for k in row if "second" in k or "time" in k]:
                row.pop(key)
        return data

    return plain(a) == plain(b)


def test_run_resumes_an_interrupted_run_and_reuses_a_finished_one(make_config):
    straight = run(make_config("straight", epochs=3))
    config = make_config("interrupted", epochs=3)
    with pytest.raises(_Stop):
        run(config, callbacks=[_stop_after(1)])
    lines: list[str] = []
    resumed = run(config, log=lines.append, label="again")
    assert lines[0].startswith("again: resumed and trained")
    assert resumed.epochs_completed == 3 and _same(resumed, straight)
    assert resumed.out_dir is not None
    stamp = (resumed.out_dir / "checkpoint.pt").stat().st_mtime_ns
    reused = run(config, log=lines.append, label="third")
    assert lines[1].startswith("third: reused")
    assert (resumed.out_dir / "checkpoint.pt").stat().st_mtime_ns == stamp  # nothing retrained
    assert reused.to_dict() == json.loads((resumed.out_dir / "results.json").read_text())
    with pytest.raises(ValueError, match="other settings.*lr: 0.001 there, 0.5 now.*--overwrite"):
        run(config.replace(lr=0.5))


def test_freeze_and_trainable_tasks_come_from_the_config(make_config):
    config = make_config("frozen", epochs=1, freeze=["backbone"], trainable_tasks=["left"])
    seen: dict[str, Any] = {}

    def started(trainer) -> None:
        model = trainer.model
        seen["frozen"] = set(model.frozen_parts)
        seen["num_tasks"] = trainer.method.num_tasks
        seen["backbone"] = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        seen["right"] = {k: v.clone() for k, v in model.heads["right"].state_dict().items()}
        seen["model"] = model

    result = run(config, on_start=started)
    model = seen["model"]
    assert seen["frozen"] == {"backbone"} and seen["num_tasks"] == 1
    # the frozen backbone (BatchNorm statistics included) is bitwise where it started
    after = model.backbone.state_dict()
    assert all(torch.equal(seen["backbone"][k], after[k]) for k in after)
    # the untrained task's head got no update either (its loss is not in the step)
    right = model.heads["right"].state_dict()
    assert all(torch.equal(seen["right"][k], v) for k, v in right.items())
    assert model.frozen_parts == frozenset()  # unfrozen after the run
    assert result.trainable_tasks == ["left"] and set(result.val) == {"left", "right"}


def test_bad_trainable_tasks_and_freeze_are_config_errors(make_config):
    with pytest.raises(ValueError, match="'trainable_tasks' names unknown task.*'nope'"):
        make_config(trainable_tasks=["nope"])
    with pytest.raises(ValueError, match="'trainable_tasks' names task.*not in 'tasks'"):
        make_config(tasks=["left"], trainable_tasks=["right"])
    with pytest.raises(ValueError, match="'freeze' must list distinct parts"):
        make_config(freeze=["backbone", "backbone"])


def test_a_folder_of_other_inputs_is_refused(make_config):
    from taskbalance.data import load_benchmark

    config = make_config("given", epochs=1)
    bench = load_benchmark("multidigits", size="tiny", cache_dir=config.cache_dir)
    first = run(config, inputs=RunInputs(benchmark=bench, identity={"subset": "a"}))
    assert first.config["inputs"] == {"subset": "a"}
    assert first.out_dir is not None
    assert not (first.out_dir / "config.yaml").exists()  # the config alone does not name the data
    with pytest.raises(ValueError, match="inputs: .*'subset': 'a'.*there.*'subset': 'b'.*now"):
        run(config, inputs=RunInputs(benchmark=bench, identity={"subset": "b"}))


def test_build_trainer_honours_loader_workers_and_pseudo_labels(make_config, tmp_path):
    """The timing pass builds its Trainer through the runner: it used to build loaders with
    its own code, without the config's workers (or pseudo-labels)."""
    from taskbalance.data.pseudo_labels import WithPseudoLabels
    from taskbalance.experiments.annotate import annotate
    from taskbalance.experiments.timing import build_trainer as timing_trainer

    config = make_config("timed", num_workers=1, labels={"left": 0.5})
    trainer = timing_trainer(config.to_dict())
    assert trainer.train_loader.num_workers == 1 and trainer.out_dir is None
    from taskbalance.data import load_benchmark

    bench = load_benchmark(
        "multidigits", size="tiny", cache_dir=config.cache_dir, labels={"left": 0.5}
    )
    annotate(bench, "left", epochs=1, steps=1, threshold=0.0, out_dir=tmp_path / "a")
    labelled = config.replace(pseudo_labels=str(tmp_path / "a" / "pseudo_labels.pt"))
    trainer = build_trainer(labelled.replace(out_dir=None))
    assert isinstance(trainer.train_loader, DataLoader)
    assert isinstance(trainer.train_loader.dataset, WithPseudoLabels)


def test_a_finished_run_is_not_reused_under_another_final_epochs(make_config):
    # results.json holds metrics computed with the run's final_epochs: reusing them for a
    # config asking for another rule would report numbers of the wrong rule
    config = make_config("final", epochs=2)
    first = run(config)
    assert first.config["final_epochs"] is None
    with pytest.raises(ValueError, match="other settings.*final_epochs: None there, 2 now"):
        run(config.replace(final_epochs=2))


def test_a_run_on_a_dataset_is_reused_only_on_the_same_files(tmp_path):
    import os
    import shutil


    root, config = fake_nyu_run(tmp_path)
    first = run(config)
    lines: list[str] = []
    moved = shutil.move(str(root), str(tmp_path / "elsewhere"))  # the same files, another folder
    assert run({**config, "data_root": moved}, log=lines.append, label="m").to_dict() == (
        first.to_dict()
    )
    assert lines == [f"m: reused ({tmp_path / 'run' / 'results.json'})"]
    # another version of the data: one file rewritten (same size, a later time)
    image = next(iter(sorted((tmp_path / "elsewhere" / "train" / "image").iterdir())))
    stat = image.stat()
    os.utime(image, (stat.st_atime, stat.st_mtime + 60))
    changed = {**config, "data_root": moved}
    with pytest.raises(ValueError, match="other settings.*dataset_files.*--overwrite"):
        run(changed)
    # unfinished (results gone, checkpoint left): resuming on other files is refused too
    (tmp_path / "run" / "results.json").unlink()
    with pytest.raises(ValueError, match="cannot resume.*dataset_files.*--overwrite"):
        run(changed)
    os.utime(image, (stat.st_atime, stat.st_mtime))  # back to the run's files: it resumes
    assert run(changed).test == first.test


def test_batchnorm_recalibration_leaves_the_global_random_stream_alone(make_config):
    from taskbalance.training.batchnorm import batchnorm_layers

    trainer = build_trainer(make_config(out_dir=None))
    assert batchnorm_layers(trainer.model)  # the multidigits model has BatchNorm
    state = torch.get_rng_state()
    assert trainer.recalibrate_batchnorm() > 0
    assert torch.equal(torch.get_rng_state(), state)  # later draws of the run are unchanged


_CLI_FIX = r"--option sampling=single on the taskbalance train command line, method_options"


def test_double_sampling_with_partial_labels_is_refused_before_training(make_config):
    # The three parts of a batch label different tasks once labels are partial: the run
    # stopped at the first such batch (with batch 6 and right=0.3, in the first epoch).
    config = make_config(method="modo", labels={"right": 0.3}, batch_size=6, steps=None)
    with pytest.raises(ValueError, match=rf"labels of \[.right.\].*{_CLI_FIX}"):
        build_trainer(config)
    single = build_trainer(config.replace(method_options={"sampling": "single"}))
    assert single.method.independent_batches == 1
    full = build_trainer(config.replace(labels={"right": 1.0}))  # every sample labelled
    assert full.method.independent_batches == 3


@pytest.mark.parametrize("where", ["rep mode", "a distributed step"])
def test_double_sampling_refusals_of_a_run_name_the_config_and_command_line_fix(
    where, make_config, monkeypatch
):
    # A run from a config (the command line's path) was told only the Python fix
    # (taskbalance.create(..., sampling='single')), which its user does not call.
    import taskbalance.training.runner as runner

    config = make_config(method="modo", mode="rep" if where == "rep mode" else "param")
    if where == "a distributed step":
        monkeypatch.setattr(runner, "in_process_group", lambda: True)  # as under torchrun
    with pytest.raises(ValueError, match=rf"{where}.*{_CLI_FIX}.*taskbalance\.create"):
        build_trainer(config)


def test_config_nonfinite_reaches_the_balancer(make_config):
    assert build_trainer(make_config(out_dir=None)).balancer.nonfinite == "raise"
    trainer = build_trainer(make_config(out_dir=None, nonfinite="skip"))
    assert trainer.balancer.nonfinite == "skip"


def test_the_dataset_is_walked_once_per_run(tmp_path, monkeypatch):
    # compare walked every run's dataset twice: when training it, and again when its timing
    # pass rebuilt the Trainer without a folder (~2 s a walk for CelebA's 200k files)
    import taskbalance.data.registry as registry
    from taskbalance.experiments.timing import build_trainer as timing_trainer

    walked: list[object] = []
    walk = registry.dataset_fingerprint

    def counted(*args, **kwargs):
        walked.append(args[1])
        return walk(*args, **kwargs)

    monkeypatch.setattr(registry, "dataset_fingerprint", counted)
    root, config = fake_nyu_run(tmp_path)
    first = run(config)  # trained
    assert walked == [str(root)] and first.config["inputs"]["dataset_files"]["files"] > 0
    timing_trainer(config)  # compare's timing pass: no folder, never reused
    assert len(walked) == 1
    run(config)  # reused: the files are compared with the finished run's
    assert len(walked) == 2


def test_a_run_from_before_the_dataset_fingerprint_is_refused_saying_why(tmp_path, capsys):
    # A run on a real dataset made before its files were recorded (no inputs.dataset_files)
    # was refused as "other settings (inputs: None there, {'dataset_files': ...} now)".
    import json

    from taskbalance.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    root, config = fake_nyu_run(tmp_path)
    run(config)
    results = tmp_path / "run" / "results.json"
    old = json.loads(results.read_text())
    del old["config"]["inputs"]  # as written before the fingerprint existed
    results.write_text(json.dumps(old))
    why = r"made before taskbalance recorded a dataset's files.*same data.*--overwrite"
    with pytest.raises(ValueError, match=why):
        run(config)  # finished: the reuse check
    results.unlink()  # killed: the resume check reads the checkpoint
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    state = load_checkpoint(checkpoint)
    del state["run_config"]["inputs"]
    save_checkpoint(checkpoint, state)
    with pytest.raises(ValueError, match=why):
        run(config)


def test_the_unrecorded_files_note_names_only_that_difference() -> None:
    from taskbalance.training.config import unrecorded_files_note

    files = {"files": 2, "bytes": 10, "digest": "ab"}
    assert "made before" in str(unrecorded_files_note(None, {"dataset_files": files}))
    assert "made before" in str(unrecorded_files_note({"x": 1}, {"x": 1, "dataset_files": files}))
    for there in ({"x": 2}, {"dataset_files": files}, "edited by hand", ["x"]):  # other reasons
        assert unrecorded_files_note(there, {"x": 1, "dataset_files": files}) is None
    assert unrecorded_files_note(None, {"x": 1}) is None  # not a dataset run


def test_a_run_folder_inside_the_data_root_does_not_change_the_data(tmp_path, monkeypatch):
    # `cd data/nyu && taskbalance train --dataset nyuv2 --data-root .`: the default runs/... lies
    # inside the data root; its files were counted as data, so no rerun could reuse or resume.
    from taskbalance.data.real.fake import write_fake_dataset
    from taskbalance.data.registry import dataset_fingerprint

    root = write_fake_dataset("nyuv2", tmp_path / "nyu", train=3, test=2, size=(8, 8))
    data = dataset_fingerprint("nyuv2", root)
    monkeypatch.chdir(root)
    config = {
        "dataset": "nyuv2", "data_root": ".", "model_options": {"width": 2, "depth": 1},
        "batch_size": 2, "epochs": 1, "steps": 1, "progress": False, "tensorboard": False,
        "out_dir": "runs/one",
    }  # fmt: skip
    first = run(config)
    assert first.config["inputs"]["dataset_files"] == data  # runs/ is not data
    lines: list[str] = []
    assert run(config, log=lines.append, label="again").to_dict() == first.to_dict()
    assert lines[0].startswith("again: reused")
    # only the entry holding the run folder is left out: other new files still count
    (root / "runs" / "other.npy").write_bytes(b"x")
    (root / "val" / "extra.npy").write_bytes(b"x")
    assert dataset_fingerprint("nyuv2", root, "runs/one")["files"] == data["files"] + 1
