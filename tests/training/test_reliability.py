"""Run folders, damaged files and code in pickles (issue 16, items 2, 4, 8, 9)."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from taskbalance.fileio import atomic_write_text, content_digest
from taskbalance.training import load_checkpoint, train
from taskbalance.training.checkpoint import capture_rng_state, restore_rng_state, save_checkpoint
from taskbalance.training.rundir import RunFolderError, load_results_file


class _WritesMarker:
    """Unpickling this object calls ``Path.touch(marker)``: code run by loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """A finished tiny run (2 epochs) to copy and damage."""
    from taskbalance.training import TrainConfig

    out = tmp_path_factory.mktemp("finished") / "run"
    config = TrainConfig.from_dict(
        {
            "benchmark": "multidigits",
            "size": "tiny",
            "epochs": 2,
            "steps": 2,
            "batch_size": 16,
            "model_options": {"width": 8, "hidden": 16},
            "cache_dir": str(cache_dir),
            "out_dir": str(out),
            "progress": False,
            "tensorboard": False,
        }
    )
    return config, train(config)


# ------------------------------------------------------------------ item 8: weights_only
def test_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 2, "model": {}, "payload": _WritesMarker(marker)}, path)
    with pytest.raises(ValueError, match="checkpoint.*could run code.*--overwrite"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same file read the old way runs the payload: the test plants a real one
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_holds_only_tensors_and_plain_values(finished):
    config, _ = finished
    path = Path(config.out_dir) / "checkpoint.pt"
    data = torch.load(path, weights_only=True)  # raises if anything else were inside
    assert data["format"] == 2 and "digest" in data


def test_rng_state_round_trip_without_pickled_numpy():
    state = capture_rng_state()
    assert isinstance(state["numpy"]["keys"], torch.Tensor)
    expected = (np.random.rand(3), torch.rand(3))  # noqa: NPY002
    np.random.rand(5)  # noqa: NPY002 - move every generator on
    torch.rand(5)
    restore_rng_state(state)
    assert np.array_equal(np.random.rand(3), expected[0])  # noqa: NPY002
    assert torch.equal(torch.rand(3), expected[1])


# ------------------------------------------------------------------ item 4: damaged checkpoints
def _damaged_copies(data: bytes) -> dict[str, bytes]:
    rng = random.Random(16)
    flipped = []
    for _ in range(12):
        b = bytearray(data)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        flipped.append(bytes(b))
    copies = {"empty": b"", "truncated": data[: len(data) // 2], "tail cut": data[:-100]}
    copies.update({f"flip{i}": b for i, b in enumerate(flipped)})
    return copies


def test_damaged_checkpoint_is_one_clear_error_or_loads_intact(finished, tmp_path):
    config, _ = finished
    original = Path(config.out_dir) / "checkpoint.pt"
    reference = content_digest(
        {k: v for k, v in torch.load(original, weights_only=True).items() if k != "digest"}
    )
    refused = 0
    for name, data in _damaged_copies(original.read_bytes()).items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        try:
            loaded = load_checkpoint(path)
        except ValueError as err:
            refused += 1
            text = str(err)
            assert str(path) in text and "--overwrite" in text and "\n" not in text, text
        else:  # a flip in zip padding or an unused header field: the content is intact
            assert content_digest(loaded) == reference, name
    assert refused >= 10  # empty, truncated and most flips


def test_bit_flip_in_tensor_data_is_caught_by_the_digest(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(1000, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    # the tensor's bytes are stored raw: flip a bit inside them (value 500.0)
    pos = bytes(data).find(np.float32(500.0).tobytes())
    assert pos > 0
    data[pos] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the digest"):
        load_checkpoint(path)


def test_corrupt_results_json_of_an_earlier_run_names_the_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"config": {"epochs": 2}, "val"')  # cut short
    with pytest.raises(ValueError, match="results.json.*not readable JSON.*--overwrite"):
        load_results_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="does not hold the results"):
        load_results_file(path)


# ------------------------------------------------------------------ item 2: run folders
def test_new_run_in_a_folder_holding_a_finished_run_is_refused(finished, tmp_path):
    config, reference = finished
    copy = tmp_path / "copy"
    shutil.copytree(config.out_dir, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(RunFolderError, match="--resume.*--overwrite"):
        train(config.replace(out_dir=str(copy), epochs=3))
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # nothing touched


def test_overwrite_replaces_every_file_of_the_earlier_run(finished, tmp_path):
    config, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(config.out_dir, copy)
    (copy / "notes.txt").write_text("mine")  # not a run file: stays
    (copy / ".best-epoch9.pt").write_bytes(b"staged by a killed run")
    result = train(config.replace(out_dir=str(copy), epochs=1), overwrite=True)
    assert result.epochs_completed == 1
    results = json.loads((copy / "results.json").read_text())
    assert results["config"]["epochs"] == 1 and len(results["history"]) == 1
    assert len((copy / "history.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(copy / "checkpoint.pt")["epoch"] == 1
    assert (copy / "notes.txt").read_text() == "mine"
    assert not (copy / ".best-epoch9.pt").exists()


def test_resume_and_overwrite_together_are_refused(make_config):
    with pytest.raises(RunFolderError, match="give one"):
        train(make_config(resume=True), overwrite=True)


def test_extending_a_finished_run_drops_its_out_of_date_results(finished, tmp_path):
    config, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(config.out_dir, copy)
    seen = []

    def look(trainer, record):
        seen.append((copy / "results.json").exists())

    train(config.replace(out_dir=str(copy), epochs=3, resume=True), callbacks=[look])
    assert seen == [False]  # while epoch 3 trains, no results.json claims the run is done
    assert json.loads((copy / "results.json").read_text())["epochs_completed"] == 3


def test_stale_temporary_files_are_removed_when_the_run_continues(finished, tmp_path):
    config, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(config.out_dir, copy)
    stale = copy / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(config.replace(out_dir=str(copy), resume=True))
    assert not stale.exists()


# ------------------------------------------------------------------ item 9: permissions
def test_atomic_writes_get_normal_permissions_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        path = atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_compare_reuse_refuses_an_unfinished_run_with_other_settings(finished, tmp_path):
    from taskbalance.experiments.compare import run_or_reuse

    config, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(config.out_dir, copy)
    (copy / "results.json").unlink()  # killed after its last checkpoint
    other = {**config.to_dict(), "out_dir": str(copy), "lr": 0.5}
    with pytest.raises(ValueError, match="lr: checkpoint 0.001, now 0.5.*--overwrite"):
        run_or_reuse(other, log=lambda _: None)
    same = run_or_reuse({**config.to_dict(), "out_dir": str(copy)}, log=lambda _: None)
    assert same["epochs_completed"] == 2 and (copy / "results.json").is_file()


def test_every_torch_load_in_the_package_is_weights_only():
    """A static check, so that no later ``torch.load`` reads pickles (which can run code)."""
    import ast

    import taskbalance

    calls = 0
    for path in Path(taskbalance.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                calls += 1
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, (
                    f"{path}:{node.lineno}"
                )
    assert calls >= 1
