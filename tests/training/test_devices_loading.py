"""``device="auto"`` and the DataLoader workers of real datasets (``num_workers="auto"``)."""

from __future__ import annotations

import os

import pytest
import torch

from taskbalance.training import TrainConfig
from taskbalance.training.devices import resolve_device
from taskbalance.training.loaders import make_loaders, resolve_workers


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda:0"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda:0")],
)
def test_auto_device_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)


def test_auto_device_in_config_and_compare(monkeypatch):
    from taskbalance.experiments.compare import resolve_jobs

    assert TrainConfig(device="auto").device == "auto"
    assert TrainConfig(device="auto", amp=True).amp  # decided when the device is known
    with pytest.raises(ValueError, match="'auto', 'cpu'"):
        TrainConfig(device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    threads = torch.get_num_threads()
    assert resolve_jobs(None, "auto", runs=100) == (threads, 1)  # auto = cpu here: one job/thread
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_jobs(None, "auto", runs=100)[0] == 1  # one job on the GPU


class _PerSample(torch.utils.data.Dataset):
    """Read sample by sample (as the real-dataset readers are)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.full((2,), float(i)), {"t": torch.tensor(i)}, {"t": torch.tensor(True)}


class _FromDisk:
    """A data source that reads files sample by sample (as RealDataSource does)."""

    reads_from_disk = True


def test_auto_workers(monkeypatch, tmp_path):
    from taskbalance.data import load_benchmark, load_dataset
    from taskbalance.data.real.fake import write_fake_dataset

    monkeypatch.delenv("TASKBALANCE_NUM_WORKERS", raising=False)
    memory = load_benchmark("multidigits", size="tiny", cache_dir=tmp_path)
    assert resolve_workers("auto", memory) == 0  # in memory: nothing to load
    assert resolve_workers("auto", object()) == 0  # users' own data: as before
    assert resolve_workers(3, memory) == 3
    root = write_fake_dataset("fingers", tmp_path / "f", train=2, test=1, size=(4, 4))
    assert load_dataset("fingers", root, val_fraction=0).reads_from_disk
    cases = {1: (1, 0), 2: (1, 0), 6: (3, 1), 8: (4, 2), 16: (4, 4), 64: (4, 4)}
    for cpus, (gpu, cpu) in cases.items():
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert resolve_workers("auto", _FromDisk(), "cuda") == gpu
        assert resolve_workers("auto", _FromDisk(), "cpu") == cpu
    monkeypatch.setenv("TASKBALANCE_NUM_WORKERS", "2")
    assert resolve_workers("auto", _FromDisk()) == 2 and resolve_workers(0, _FromDisk()) == 0
    monkeypatch.setenv("TASKBALANCE_NUM_WORKERS", "many")
    with pytest.raises(ValueError, match="TASKBALANCE_NUM_WORKERS.*'many'"):
        resolve_workers("auto", _FromDisk())
    with pytest.raises(ValueError, match="'num_workers' must be 'auto' or an integer"):
        TrainConfig(num_workers=-1)


def test_workers_prefetch_and_give_the_same_batches_every_epoch():
    data = _PerSample()
    plain, _, _ = make_loaders(data, None, batch_size=3, seed=5)
    loaded, val, _ = make_loaders(data, data, batch_size=3, seed=5, num_workers=1)
    assert loaded.prefetch_factor == 4 and val is not None and val.num_workers == 1
    # not persistent: a persistent loader skips the seed draw from the second epoch on, so its
    # shuffles (and a resumed run's) would differ from epoch 2
    assert not loaded.persistent_workers
    for _ in range(3):
        got = [b[1]["t"].tolist() for b in loaded]
        assert got == [b[1]["t"].tolist() for b in plain]
        assert torch.equal(loaded.generator.get_state(), plain.generator.get_state())
        seen: list[float] = sum(got, [])  # 10 = 3 * 3 + 1: the single-sample last batch is dropped
        assert len(seen) == len(set(seen)) == 9


def test_a_run_with_workers_equals_one_without(tmp_path):
    from taskbalance.data.real.fake import write_fake_dataset
    from taskbalance.training import train

    root = write_fake_dataset("nyuv2", tmp_path / "nyu", train=7, test=2, size=(8, 8))
    base = {
        "dataset": "nyuv2", "data_root": str(root), "model_options": {"width": 2, "depth": 1},
        "batch_size": 2, "epochs": 2, "progress": False, "tensorboard": False,
    }  # fmt: skip
    # whole epochs: with a --steps cap the workers' prefetch may draw the sampler's trailing
    # (empty) permutation that a capped epoch without workers never reaches (docs/training.md)
    runs = [
        train({**base, "num_workers": workers, "out_dir": str(tmp_path / f"w{workers}")})
        for workers in (0, 1)
    ]
    assert runs[0].test == runs[1].test and runs[0].val == runs[1].val
    assert runs[0].test is not None and runs[0].test["normals"]["mean_angle"] > 0
