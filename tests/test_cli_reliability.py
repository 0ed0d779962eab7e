"""The command line with stale folders, damaged files and small mistakes (issue 16, items 2, 4,
7, 9): one line naming the problem and the fix, exit status 2, nothing lost."""

from __future__ import annotations

import json
import os
import sys

import pytest
from _cli_errors import user_error as _user_error

from taskbalance.cli import main
from taskbalance.cli._runtime import default_threads

TINY = ["--size", "tiny", "--epochs", "1", "--steps", "2"]


@pytest.fixture(scope="module", autouse=True)
def _benchmark_cache(tmp_path_factory):
    old = os.environ.get("TASKBALANCE_CACHE")
    os.environ["TASKBALANCE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TASKBALANCE_CACHE", None)
    else:
        os.environ["TASKBALANCE_CACHE"] = old




@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch tiny run made by ``train``."""
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--size", "tiny", "--epochs", "2", "--steps", "2", "--out", str(out)]
    assert main(argv) == 0
    return argv, out


def test_second_run_into_a_finished_folder_is_refused_then_overwritten(run, tmp_path, capsys):
    argv, out = run
    folder = tmp_path / "r"
    import shutil

    shutil.copytree(out, folder)
    again = [*argv[:-1], str(folder)]
    before = (folder / "results.json").read_bytes()
    _user_error(capsys, again, str(folder), "--resume", "--overwrite")
    assert (folder / "results.json").read_bytes() == before
    assert main([*again[:4], "1", *again[5:], "--overwrite"]) == 0  # 1 epoch instead of 2
    results = json.loads((folder / "results.json").read_text())
    assert results["epochs_completed"] == 1 and len(results["history"]) == 1


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped"])
def test_resume_from_a_damaged_checkpoint_is_one_line(run, tmp_path, capsys, damage):
    argv, out = run
    import shutil

    folder = tmp_path / "r"
    shutil.copytree(out, folder)
    path = folder / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "empty":
        data = b""
    elif damage == "truncated":
        data = data[: len(data) // 3]
    else:  # inside the first tensor's bytes (found by the digest, not by the zip reader)
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x08
        data = bytes(flipped)
    path.write_bytes(data)
    resume = [*argv[:4], "3", *argv[5:-1], str(folder), "--resume"]
    _user_error(capsys, resume, str(path), "--overwrite")


def test_bad_option_values_and_paths_name_the_option(run, tmp_path, capsys):
    argv, out = run
    _user_error(
        capsys,
        ["train", *TINY, "--method", "static", "--option", "weights=abc", "--out", str(tmp_path)],
        "weights",
        "--option weights=0.7,1.3",
    )
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _user_error(capsys, ["train", *TINY, "--out", str(a_file)], "--out", str(a_file))
    _user_error(capsys, ["train", *TINY, "--out", str(a_file / "sub")], "--out", "is a file")
    for wrong in (out / "checkpoint.pt", out / "results.json", tmp_path / "missing.pt"):
        _user_error(
            capsys,
            ["train", *TINY, "--pseudo-labels", str(wrong), "--out", str(tmp_path / "p")],
            "--pseudo-labels",
            str(wrong),
        )
    assert not (tmp_path / "p").exists()


def test_tune_with_a_bad_storage_fails_before_training(tmp_path, capsys):
    out = tmp_path / "t"
    argv = ["tune", "--benchmark", "multidigits", *TINY, "--out", str(out)]
    _user_error(capsys, [*argv, "--storage", "bogus://"], "--storage", "bogus://")
    assert not (out / "baselines").exists()


def _stat(*cpus: tuple[int, int, int]) -> str:
    """/proc/stat with per-CPU (user, idle, iowait) jiffies (the other fields 0)."""
    lines = ["cpu  1 2 3 4 5 6 7 8 9 10", "intr 1 2 3"]
    lines += [f"cpu{k} {u} 0 0 {i} {w} 0 0 0 0 0" for k, (u, i, w) in enumerate(cpus)]
    return "\n".join(lines)


def _reader(*texts: str | None):
    snapshots = iter(texts)
    return lambda: next(snapshots)


def test_threads_default_counts_the_cpus_busy_now(monkeypatch, capsys):
    from taskbalance.cli._runtime import busy_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    # a heavy job just ended: the 1-minute load average still says 1.6, the CPUs are idle now
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    idle = _reader(_stat((5, 5, 0), (5, 5, 0)), _stat((5, 15, 0), (5, 15, 0)))
    assert default_threads(idle) == (2, "2 CPUs, 0.0 busy")
    both = _reader(_stat((0, 0, 0), (0, 0, 0)), _stat((10, 0, 0), (9, 1, 0)))
    assert default_threads(both) == (1, "2 CPUs, 1.9 busy")  # 10/10 + 9/10
    # waiting on the disk is not busy; CPUs outside the affinity do not count
    text = _reader(_stat((0, 0, 0), (0, 0, 0), (0, 0, 0)), _stat((4, 2, 4), (0, 5, 5), (9, 1, 0)))
    assert busy_cpus({0, 1}, text, wait=lambda s: None) == pytest.approx(0.4)
    # no /proc/stat (not Linux): the load average
    assert default_threads(_reader(None)) == (1, "2 CPUs, load 1.6")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads(_reader(None))[0] == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    quiet = [(0, 10, 0)] * 64
    assert default_threads(_reader(_stat(*[(0, 0, 0)] * 64), _stat(*quiet)))[0] == 4  # capped
    busy = [(10, 0, 0)] * 62 + [(0, 10, 0)] * 2
    assert default_threads(_reader(_stat(*[(0, 0, 0)] * 64), _stat(*busy)))[0] == 2
    assert main(["train", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_progress_lines_and_thread_choice_are_shown(tmp_path, capsys):
    argv = ["train", "--size", "tiny", "--epochs", "2", "--steps", "2", "--out", str(tmp_path)]
    assert main([*argv, "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "torch threads: 1 (--threads)" in captured.out
    run = f"{tmp_path.parent.name}/{tmp_path.name}: "  # which run the line is about
    epochs = [line for line in captured.err.splitlines() if line.startswith(run + "epoch ")]
    assert len(epochs) == 2  # not a terminal: one line per epoch
    assert epochs[1].startswith(run + "epoch 2/2: 2 steps, mean task loss ")
    assert "samples/s" in epochs[1]


def test_progress_bar_on_a_terminal_shows_loss_and_samples_per_second(
    tmp_path, capsys, monkeypatch
):
    from taskbalance.training import TrainConfig, train

    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # capsys's stream
    config = TrainConfig.from_dict(
        {"size": "tiny", "epochs": 1, "steps": 2, "out_dir": str(tmp_path), "tensorboard": False}
    )
    train(config)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "samples_s=" in err
    assert "mean task loss" not in err  # the bar, not the per-epoch line


def test_annotate_keeping_nothing_warns_in_one_line(tmp_path, capsys):
    argv = ["annotate", "--benchmark", "multidigits", "--labels", "left=0.5", *TINY]
    assert main([*argv, "--threshold", "1", "--out", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "kept 0 of" in warnings[0], warnings
    assert warnings[0].startswith("taskbalance: warning: annotate left")


def test_compare_with_other_settings_names_overwrite(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "ew", "--seeds", "1", "--no-timing", *TINY, "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    longer = ["compare", "--methods", "ew", "--seeds", "1", "--no-timing", "--size", "tiny"]
    longer += ["--epochs", "2", "--steps", "2"]
    _user_error(capsys, [*longer, "--out", str(out)], "other settings", "--overwrite")
    stale = out / ".leaderboard.md.x1y2z3.tmp"  # a compare killed while writing its report
    stale.write_text("half a leaderboard")
    assert main([*longer, "--out", str(out), "--overwrite"]) == 0
    assert not stale.exists()
    assert "--overwrite: removed the earlier comparison" in capsys.readouterr().out
    board = json.loads((out / "results.json").read_text())
    assert board["settings"]["epochs"] == 2
    for run in board["runs"] + board["baselines"]:
        assert (
            json.loads(
                (out / run["out_dir"].split(str(out) + "/")[1] / "results.json").read_text()
            )["epochs_completed"]
            == 2
        )


def test_commands_other_than_train_and_compare_refuse_to_run_under_torchrun(
    monkeypatch, capsys
) -> None:
    from taskbalance.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["diagnose", "--benchmark", "multidigits", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "'taskbalance diagnose' does not run under torchrun (WORLD_SIZE=2)" in err
    assert "docs/distributed.md" in err
    assert main(["train", "--nproc", "2", "--method", "ew", "--epochs", "1"]) == 2
    assert "under torchrun leave --nproc out" in capsys.readouterr().err


def _no_launch(monkeypatch) -> None:
    import taskbalance.training.launch as launch

    def refuse(nproc, argv):
        raise AssertionError(f"torchrun started for {argv}")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch, "launch", refuse)


def test_nproc_refuses_what_the_ranks_would_refuse_before_starting_torchrun(
    monkeypatch, capsys, tmp_path
) -> None:
    # one error from the parent, as without --nproc, instead of one per rank plus torchrun's
    # failure report: compare's plan and train's config, method and sampling
    _no_launch(monkeypatch)
    out = tmp_path / "never"
    one = ["compare", *TINY, "--out", str(out)]
    compare = [*one, "--nproc", "2"]
    line = _user_error(capsys, [*compare, "--methods", "ew,modo"], "taskbalance compare: error:")
    assert "method 'modo' with sampling='independent'" in line
    assert "distributed step" in line and "--option modo.sampling=single" in line
    bad = ["--methods", "ew,cagrad", "--option", "cagrad.cc=1"]
    line = _user_error(capsys, [*compare, *bad], "--option cagrad.cc=1", "unknown option(s) 'cc'")
    assert line == _user_error(capsys, [*one, *bad])  # as without --nproc
    _user_error(capsys, [*compare, "--labels", "left=0.5"], "--labels/--workflows does not run")
    train = ["train", "--nproc", "2", *TINY, "--out", str(out)]
    line = _user_error(capsys, [*train, "--method", "modo"], "taskbalance train: error:")
    assert "method 'modo' with sampling='independent'" in line
    assert "distributed step" in line and "--option sampling=single" in line
    line = _user_error(capsys, [*train, "--method", "static"], "'static' needs weights=")
    assert line.startswith("taskbalance train: error: method 'static' with options none:")
    _user_error(capsys, [*train, "--method", "cagrad", "--option", "cc=1"], "['cc']", "cagrad")
    assert not out.exists()


def test_nproc_starts_torchrun_for_input_the_ranks_take(monkeypatch, tmp_path) -> None:
    # the parent validates (distributed, as the ranks will), then starts torchrun with argv
    import taskbalance.experiments.compare as compare_module
    import taskbalance.training.launch as launch
    import taskbalance.training.runner as runner

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    events: list[tuple] = []

    def record(nproc: int, argv: list[str]) -> int:
        events.append((nproc, argv))
        return 0

    monkeypatch.setattr(launch, "launch", record)
    for module, name in ((compare_module, "check_compare"), (runner, "check_method")):
        check = getattr(module, name)

        def spy(settings, distributed, check=check, name=name):
            events.append((name, distributed))
            return check(settings, distributed)

        monkeypatch.setattr(module, name, spy)
    out = str(tmp_path / "run")
    compare = ["compare", "--nproc", "2", "--methods", "ew,modo", "--option",
               "modo.sampling=single", *TINY, "--out", out]  # fmt: skip
    train = ["train", "--nproc", "3", "--method", "modo", "--option", "sampling=single", *TINY]
    assert main(compare) == 0 and main(train) == 0
    assert events == [("check_compare", True), (2, compare), ("check_method", True), (3, train)]
    assert not (tmp_path / "run").exists()  # the ranks write it


def test_nproc_runs_the_same_command_under_torchrun(monkeypatch) -> None:
    import subprocess
    import sys

    from taskbalance.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    started: list[list[str]] = []

    def call(cmd: list[str]) -> int:
        started.append(cmd)
        return 7

    monkeypatch.setattr(subprocess, "call", call)
    argv = ["train", "--nproc", "3", "--method", "mgda", "--nproc=3", "--epochs", "1"]
    assert main(argv) == 7  # torchrun's exit status
    assert started == [
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node=3", "-m", "taskbalance",
            "train", "--method", "mgda", "--epochs", "1",
        ]
    ]  # fmt: skip
