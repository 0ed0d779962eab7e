"""Benchmark registry, generation determinism, caching, items, tasks and models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from taskbalance.data import (
    Benchmark,
    MultiTaskDataset,
    available_benchmarks,
    default_cache_dir,
    load_benchmark,
)
from taskbalance.data.benchmark import get_spec

BENCHMARKS = ("multidigits", "scenes", "pingpong")

EXPECTED_TASKS = {
    "multidigits": ["left", "right"],
    "scenes": ["segmentation", "depth", "normals"],
    "pingpong": ["ball", "table", "events"],
}


def _arrays(bench: Benchmark) -> dict[str, torch.Tensor]:
    out = {}
    for split in ("train", "val", "test"):
        ds: MultiTaskDataset = getattr(bench, split)
        out[f"{split}/inputs"] = ds.inputs
        out.update({f"{split}/{k}": v for k, v in ds.targets.items()})
    return out


def test_available_benchmarks() -> None:
    from taskbalance.data.synthetic_groups import NAME as GROUPS
    from taskbalance.data.synthetic_mtl import VARIANTS

    assert available_benchmarks() == sorted([*BENCHMARKS, *VARIANTS, GROUPS])


def test_unknown_benchmark_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multidigits.*pingpong.*scenes"):
        load_benchmark("mnist", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": "huge"}, "size must be"),
        ({"size": {"trian": 5}}, "trian"),
        ({"size": {"train": 0}}, "train"),
        ({"size": {"base": "small"}}, "base"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"labels": {"nope": 0.5}}, "nope"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_benchmark("multidigits", cache_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing generated for a bad call


@pytest.mark.parametrize("name", BENCHMARKS)
def test_deterministic_given_seed(name: str, tmp_path: Path, tiny: dict[str, Benchmark]) -> None:
    # regenerate in a fresh cache: the arrays must be identical to the session's copy
    again = load_benchmark(name, size="tiny", cache_dir=tmp_path / "a")
    first = _arrays(tiny[name])
    for key, value in _arrays(again).items():
        assert torch.equal(value, first[key]), key
    other = load_benchmark(name, size="tiny", seed=1, cache_dir=tmp_path / "b")
    assert not torch.equal(other.train.inputs, tiny[name].train.inputs)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_splits_are_different_samples(name: str, tiny: dict[str, Benchmark]) -> None:
    train = tiny[name].train.inputs.flatten(1)
    for split in ("val", "test"):
        other = getattr(tiny[name], split).inputs.flatten(1)
        # no input of val/test occurs in train
        same = (train[:, None, :] == other[None, :, :]).all(-1)
        assert not same.any(), split


def test_cache_file_reused_and_corrupt_file_regenerated(tmp_path: Path) -> None:
    first = load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
    files = list(tmp_path.glob("scenes-*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stamp
    cached = _arrays(second)
    for key, value in _arrays(first).items():  # the cache round trip keeps values and dtypes
        assert cached[key].dtype == value.dtype and torch.equal(cached[key], value), key
    files[0].write_bytes(b"not an npz file")
    third = load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
    assert torch.equal(first.train.inputs, third.train.inputs)
    np.savez(files[0], **{"train/inputs": np.zeros((2, 3, 4, 4), np.uint8)})  # type: ignore[arg-type]  # incomplete
    fourth = load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
    assert torch.equal(first.test.targets["normals"], fourth.test.targets["normals"])
    # different sizes and seeds get different files
    load_benchmark("scenes", size={"base": "tiny", "train": 8}, cache_dir=tmp_path)
    load_benchmark("scenes", size="tiny", seed=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("scenes-*.npz"))) == 3


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASKBALANCE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    bench = load_benchmark("multidigits", size={"base": "tiny", "train": 4})
    assert len(bench.train) == 4
    assert list((tmp_path / "c").glob("multidigits-*.npz"))
    monkeypatch.delenv("TASKBALANCE_CACHE")
    assert default_cache_dir() == Path("~/.cache/taskbalance").expanduser()


def test_size_overrides(tmp_path: Path) -> None:
    bench = load_benchmark(
        "multidigits", size={"base": "tiny", "train": 10, "val": 3, "test": 2}, cache_dir=tmp_path
    )
    assert (len(bench.train), len(bench.val), len(bench.test)) == (10, 3, 2)
    spec = get_spec("pingpong")
    assert spec.resolve_size("default")["width"] == 64
    assert spec.resolve_size({"width": 48})["width"] == 48


@pytest.mark.parametrize("name", BENCHMARKS)
def test_items_shapes_and_dtypes(name: str, tiny: dict[str, Benchmark]) -> None:
    bench = tiny[name]
    assert bench.task_names == EXPECTED_TASKS[name]
    x, targets, masks = bench.train[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == bench.input_shape
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert list(targets) == bench.task_names == list(masks)
    for task, mask in masks.items():
        assert mask.dtype == torch.bool and mask.dim() == 0 and bool(mask), task
    _, h, w = bench.input_shape
    expected = {
        "left": ((), torch.int64),
        "right": ((), torch.int64),
        "segmentation": ((h, w), torch.int64),
        "depth": ((1, h, w), torch.float32),
        "normals": ((3, h, w), torch.float32),
        "ball": ((2,), torch.float32),
        "table": ((h, w), torch.int64),
        "events": ((), torch.int64),
    }
    for task, target in targets.items():
        assert (tuple(target.shape), target.dtype) == expected[task], task
    batch = next(iter(DataLoader(bench.train, batch_size=5)))
    assert batch[0].shape == (5, *bench.input_shape)
    assert all(m.shape == (5,) for m in batch[2].values())


@pytest.mark.parametrize("name", BENCHMARKS)
def test_tasks_and_model(name: str, tiny: dict[str, Benchmark]) -> None:
    pytest.importorskip("taskbalance.tasks")
    pytest.importorskip("taskbalance.models")
    bench = tiny[name]
    assert [t.name for t in bench.tasks] == bench.task_names
    model = bench.build_model()
    x, targets, masks = next(iter(DataLoader(bench.train, batch_size=4)))
    out = model(x)
    assert list(out) == bench.task_names
    for task in bench.tasks:
        loss = task.loss(out[task.name], targets[task.name], masks[task.name])
        assert loss is not None and torch.isfinite(loss), task.name
    with pytest.raises(ValueError, match="bogus"):
        bench.build_model(bogus=1)


def test_with_masks_zeroes_unlabelled() -> None:
    ds = MultiTaskDataset(
        torch.zeros(3, 1, 2, 2, dtype=torch.uint8),
        {"a": torch.tensor([1, 2, 3]), "b": torch.ones(3, 2)},
    )
    out = ds.with_masks({"b": torch.tensor([True, False, True])})
    assert out.targets["b"].tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    assert out.targets["a"].tolist() == [1, 2, 3]
    _, targets, masks = out[1]
    assert not bool(masks["b"]) and bool(masks["a"])
    with pytest.raises(ValueError, match="shape"):
        MultiTaskDataset(torch.zeros(3, 1), {"a": torch.zeros(3)}, {"a": torch.ones(2).bool()})


def test_generation_is_not_trivially_constant(tiny: dict[str, Benchmark]) -> None:
    for bench in tiny.values():
        inputs = bench.train.inputs.float()
        assert float(inputs.std()) > 5.0  # uint8 scale: real images, not blanks
        assert np.isfinite(inputs.numpy()).all()


def test_damaged_cache_files_are_regenerated_with_a_one_line_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
    (path,) = tmp_path.glob("scenes-*.npz")
    good = path.read_bytes()
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    wrong_keys = {k.replace("normals", "normal"): v for k, v in arrays.items()}
    wrong_shape = dict(arrays, **{"train/inputs": arrays["train/inputs"][:, :, :-1]})
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10  # inside the arrays' bytes: the zip CRC catches it
    damages = {
        "truncated": lambda: path.write_bytes(good[: len(good) // 3]),
        "central directory cut": lambda: path.write_bytes(good[:-40]),
        "bit flip": lambda: path.write_bytes(bytes(flipped)),
        "wrong keys": lambda: np.savez(path, **wrong_keys),
        "wrong shape": lambda: np.savez(path, **wrong_shape),
        "empty": lambda: path.write_bytes(b""),
    }
    for what, damage in damages.items():
        damage()
        capsys.readouterr()
        again = load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "regenerating" in lines[0], what
        assert torch.equal(again.train.inputs, first.train.inputs), what
        assert torch.equal(again.test.targets["normals"], first.test.targets["normals"]), what
        assert path.read_bytes() == good, what  # rewritten: the next load is silent
    load_benchmark("scenes", size="tiny", cache_dir=tmp_path)
    assert capsys.readouterr().err == ""
    assert not list(tmp_path.glob("*.tmp*"))


def test_temporary_cache_files_of_killed_processes_are_removed(tmp_path: Path) -> None:
    import os

    load_benchmark("multidigits", size="tiny", cache_dir=tmp_path)
    (path,) = tmp_path.glob("multidigits-*.npz")
    old = tmp_path / f"{path.stem}abc.tmp.npz"  # a write killed two hours ago
    fresh = tmp_path / f"{path.stem}def.tmp.npz"  # maybe another process still writing
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (path.stat().st_atime - 7200, path.stat().st_mtime - 7200))
    path.write_bytes(b"")  # damaged: regenerated and written again
    load_benchmark("multidigits", size="tiny", cache_dir=tmp_path)
    assert not old.exists() and fresh.exists()
