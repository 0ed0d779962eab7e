"""Fault injection: ``train``, ``compare``, ``compare --labels`` (workflows), ``tune`` and
``annotate`` killed with SIGKILL at seeded
points, then continued, end with exactly the results of an uninterrupted run and no temporary
file behind.

Each command runs as ``python -m taskbalance ...`` in a subprocess. The kill points are
instrumented, not timed: ``TASKBALANCE_FAULT_KILL=N:PHASE`` makes the process kill itself at its
N-th atomic file write, before the rename (a temporary file is on disk) or after it (see
``taskbalance.fileio``). A seeded generator picks N and the phase; each chain kills
a command several times in a row (the continued run is killed again) before a last run finishes
it. The reference run logs its writes (``TASKBALANCE_FAULT_LOG``), which bounds the kill points.

Deselect with ``-m "not fault_injection"`` (about a minute of subprocesses on two cores). More
chains: ``TASKBALANCE_FAULT_SEEDS=0,1,2,3 pytest tests/test_fault_injection.py -s`` (each seed
gives other kill points; the printed lines count them).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.fault_injection

TINY = ["--size", "tiny", "--steps", "2", "--threads", "1"]
# Keys whose values are wall-clock measurements (or record the resume itself): not compared.
SEEDS = [int(x) for x in os.environ.get("TASKBALANCE_FAULT_SEEDS", "0").split(",")]
_NOT_COMPARED = re.compile(r"second|time|timing|speedup|samples_per|created|^resume$|^storage$")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Subprocess environment: this checkout's sources first, a shared benchmark cache (filled
    once here, so no kill lands in data generation), one thread."""
    cache = tmp_path_factory.mktemp("cache")
    from taskbalance.data import load_benchmark

    load_benchmark("multidigits", size="tiny", cache_dir=cache)
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "TASKBALANCE_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
    }


def _run(
    env: dict[str, str], argv: Sequence[str], cwd: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskbalance", *argv],
        cwd=cwd,
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _reference(env: dict[str, str], argv: Sequence[str], cwd: Path) -> int:
    """Run ``argv`` uninterrupted, in this process (cheaper than a subprocess; the same code);
    returns its number of atomic writes."""
    from taskbalance.cli import main

    log = cwd / "writes.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TASKBALANCE_CACHE", env["TASKBALANCE_CACHE"])
        patch.setenv("TASKBALANCE_FAULT_LOG", str(log))
        patch.chdir(cwd)
        assert main(list(argv)) == 0
    return len(log.read_text().splitlines())


def _kill_chain(
    env: dict[str, str],
    argv: Callable[[], list[str]],
    cwd: Path,
    writes: int,
    *,
    seed: int,
    kills: int,
) -> list[str]:
    """Kill the command ``kills`` times in a row at seeded write numbers (each continued run
    is killed again), then let it finish. Returns the kill points that did kill."""
    rng = random.Random(seed)
    remaining = writes
    done: list[str] = []
    for _ in range(kills):
        point = f"{rng.randint(1, max(1, remaining - 1))}:{rng.choice(['before', 'after'])}"
        proc = _run(env, argv(), cwd, TASKBALANCE_FAULT_KILL=point)
        if proc.returncode == 0:  # the continued run had fewer writes left: it finished
            break
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)
        done.append(point)
        remaining = max(2, remaining - int(point.split(":")[0]) + 1)
    proc = _run(env, argv(), cwd)
    assert proc.returncode == 0, (done, proc.stderr)
    return done


def _plain(value: Any, root: Path) -> Any:
    """JSON content with wall-clock keys dropped and the run's folder replaced by ``ROOT``."""
    if isinstance(value, dict):
        return {k: _plain(v, root) for k, v in value.items() if not _NOT_COMPARED.search(k)}
    if isinstance(value, list):
        return [_plain(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(str(root), "ROOT")
    return value


def _json(path: Path, root: Path) -> Any:
    return _plain(json.loads(path.read_text()), root)


def _no_leftovers(folder: Path) -> None:
    left = [
        p
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or ".tmp." in p.name or p.name.startswith(".best-epoch")
    ]
    assert not left, left


def _same_tensors(a: Path, b: Path, root_a: Path, root_b: Path) -> None:
    """The files hold equal tensors and plain values (paths compared relative to the roots)."""
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    x.pop("digest", None), y.pop("digest", None)

    def walk(u: Any, v: Any, where: str) -> None:
        if isinstance(u, torch.Tensor):
            assert torch.equal(u, v), where
        elif isinstance(u, dict):
            keep = [k for k in u if not _NOT_COMPARED.search(str(k))]
            assert keep == [k for k in v if not _NOT_COMPARED.search(str(k))], where
            for k in keep:
                walk(u[k], v[k], f"{where}/{k}")
        elif isinstance(u, (list, tuple)):
            assert len(u) == len(v), where
            for i, (p, q) in enumerate(zip(u, v, strict=True)):
                walk(p, q, f"{where}[{i}]")
        else:
            assert _plain(u, root_a) == _plain(v, root_b), where

    walk(x, y, a.name)


def _report(command: str, points: list[str]) -> None:
    print(f"fault injection {command}: {len(points)} kill points, all recovered: {points}")


# ------------------------------------------------------------------------------------ commands
@pytest.mark.parametrize("seed", SEEDS)
def test_train_killed_and_resumed_ends_as_uninterrupted(env, tmp_path, seed):
    train = ["train", *TINY, "--epochs", "3"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    writes = _reference(env, [*train, "--out", str(ref / "run")], ref)

    def argv() -> list[str]:  # what the user does: --resume once a checkpoint exists
        resume = ["--resume"] if (out / "run" / "checkpoint.pt").exists() else []
        return [*train, "--out", str(out / "run"), *resume]

    out.mkdir()
    points = _kill_chain(env, argv, out, writes, seed=1 + 10 * seed, kills=3)
    assert len(points) >= 3
    for name in ("results.json",):
        assert _json(out / "run" / name, out) == _json(ref / "run" / name, ref)
    for name in ("history.jsonl",):
        ours = (out / "run" / name).read_text().splitlines()
        theirs = (ref / "run" / name).read_text().splitlines()
        assert [_plain(json.loads(x), out) for x in ours] == [
            _plain(json.loads(x), ref) for x in theirs
        ]
    _same_tensors(out / "run" / "best.pt", ref / "run" / "best.pt", out, ref)
    _same_tensors(out / "run" / "checkpoint.pt", ref / "run" / "checkpoint.pt", out, ref)
    _no_leftovers(out)
    _report(f"train (seed {seed})", points)


@pytest.mark.parametrize("seed", SEEDS)
def test_compare_killed_and_rerun_ends_as_uninterrupted(env, tmp_path, seed):
    compare = ["compare", "--methods", "ew", "--seeds", "1", "--no-timing", *TINY, "--epochs", "2"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    writes = _reference(env, [*compare, "--out", str(ref / "cmp")], ref)
    out.mkdir()
    points = _kill_chain(
        env, lambda: [*compare, "--out", str(out / "cmp")], out, writes, seed=3 + 10 * seed, kills=3
    )
    assert len(points) >= 3
    assert _json(out / "cmp" / "results.json", out) == _json(ref / "cmp" / "results.json", ref)
    for run in (ref / "cmp").rglob("results.json"):
        twin = out / run.relative_to(ref)
        assert _json(twin, out) == _json(run, ref), run
    _no_leftovers(out)
    _report(f"compare (seed {seed})", points)


@pytest.mark.parametrize("seed", SEEDS)
def test_tune_killed_and_rerun_ends_as_uninterrupted(env, tmp_path, seed):
    tune = ["tune", "--benchmark", "multidigits", *TINY, "--epochs", "1", "--trials", "3"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    writes = _reference(env, [*tune, "--out", str(ref / "t")], ref)
    out.mkdir()
    points = _kill_chain(
        env, lambda: [*tune, "--out", str(out / "t")], out, writes, seed=4 + 10 * seed, kills=3
    )
    assert len(points) >= 2
    best = _json(out / "t" / "best_weights.json", out)
    expected = _json(ref / "t" / "best_weights.json", ref)
    best.pop("best_trial"), expected.pop("best_trial")  # a retried trial gets a new number
    assert best == expected

    import optuna

    def finished(folder: Path) -> list[tuple[dict[str, float], float | None]]:
        storage = f"sqlite:///{folder / 't' / 'tune.db'}"
        study = optuna.load_study(study_name="multidigits-static-weights", storage=storage)
        done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        return [(t.params, t.value) for t in done]

    assert finished(out) == finished(ref)  # same weights sampled, same values, same order
    _no_leftovers(out)
    _report(f"tune (seed {seed})", points)


@pytest.mark.parametrize("seed", SEEDS)
def test_annotate_killed_and_rerun_ends_as_uninterrupted(env, tmp_path, seed):
    annotate = ["annotate", "--benchmark", "multidigits", "--labels", "left=0.5", *TINY]
    annotate += ["--epochs", "3", "--threshold", "0.1"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    writes = _reference(env, [*annotate, "--out", str(ref / "a")], ref)
    out.mkdir()
    points = _kill_chain(
        env, lambda: [*annotate, "--out", str(out / "a")], out, writes, seed=5 + 10 * seed, kills=2
    )
    assert len(points) >= 2
    _same_tensors(out / "a" / "pseudo_labels.pt", ref / "a" / "pseudo_labels.pt", out, ref)
    assert _json(out / "a" / "annotate.json", out) == _json(ref / "a" / "annotate.json", ref)
    teacher = Path("a", "teachers", "left", "best.pt")
    _same_tensors(out / teacher, ref / teacher, out, ref)
    _no_leftovers(out)
    _report(f"annotate (seed {seed})", points)


@pytest.mark.parametrize("seed", SEEDS)
def test_workflows_killed_and_rerun_end_as_uninterrupted(env, tmp_path, seed):
    """Every workflow run (reference, each stage of staged, annotated's teachers and
    student) continues from its checkpoint."""
    workflows = ["compare", "--labels", "left=0.5", "--workflows", "staged,annotated"]
    workflows += [*TINY, "--epochs", "1"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    writes = _reference(env, [*workflows, "--out", str(ref / "w")], ref)
    out.mkdir()
    points = _kill_chain(
        env, lambda: [*workflows, "--out", str(out / "w")], out, writes, seed=6 + 10 * seed,
        kills=2,
    )
    assert len(points) >= 2
    assert _json(out / "w" / "results.json", out) == _json(ref / "w" / "results.json", ref)
    runs = sorted((ref / "w" / "runs").rglob("results.json"))
    assert len(runs) >= 3  # full, staged (and its stages), annotated
    for run in runs:
        twin = out / run.relative_to(ref)
        assert _json(twin, out) == _json(run, ref), run
    for ckpt in (ref / "w" / "runs").rglob("checkpoint.pt"):
        _same_tensors(out / ckpt.relative_to(ref), ckpt, out, ref)
    _no_leftovers(out)
    _report(f"compare --labels (seed {seed})", points)
