"""The diagnose command: its equal-weights update, its files, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from taskbalance import Balancer, create
from taskbalance.cli import main
from taskbalance.experiments.diagnose import _EqualGradientSum


def _step_grads(method: object) -> tuple[list[torch.Tensor], object]:
    torch.manual_seed(0)
    shared = nn.Linear(3, 4)
    heads = [nn.Linear(4, 1), nn.Linear(4, 1)]
    x = torch.randn(8, 3)
    z = shared(x)
    losses = {"a": heads[0](z).pow(2).mean(), "b": (heads[1](z) - 1).abs().mean()}
    bal = Balancer(method, list(shared.parameters()), "param")  # type: ignore[arg-type]
    info = bal.backward(losses)
    grads = [p.grad.clone() for p in shared.parameters()]  # type: ignore[union-attr]
    return grads, info


def test_equal_gradient_sum_writes_the_ew_update_and_reports_statistics() -> None:
    mine, info = _step_grads(_EqualGradientSum(2))
    ew, ew_info = _step_grads(create("ew", 2))
    for a, b in zip(mine, ew, strict=True):
        torch.testing.assert_close(a, b)
    assert ew_info.cosines is None  # type: ignore[attr-defined]  # why diagnose needs its own
    assert info.cosines is not None and info.grad_norms is not None  # type: ignore[attr-defined]


def test_diagnose_command_writes_consistent_report(tmp_path: Path) -> None:
    out = tmp_path / "diag"
    argv = ["diagnose", "--benchmark", "multidigits", "--size", "tiny", "--steps", "6"]
    assert main([*argv, "--out", str(out), "--threads", "1"]) == 0
    for name in ("conflict.png", "affinity.png", "dominance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads((out / "diagnostics.json").read_text())
    T = len(raw["tasks"])
    cos = np.array(raw["mean_cosine"])
    np.testing.assert_allclose(np.diag(cos), 1.0)
    np.testing.assert_allclose(cos, cos.T)
    assert [g["k"] for g in raw["groupings"]] == list(range(1, T + 1))
    assert np.median(raw["loss_scale_ratios"]) == pytest.approx(1.0)
    summary = (out / "summary.md").read_text()
    assert "arXiv:2109.04617" in summary and "compare" in summary
    assert f"{raw['steps']} measured" in summary
    # The reported conflict rate is the off-diagonal mean of the negative fractions.
    neg = np.array(raw["negative_fraction"])
    rate = neg[~np.eye(T, dtype=bool)].mean()
    assert raw["evidence"]["conflict_rate"] == pytest.approx(rate)
    # per epoch (pass over the tiny training set, 2 batches): a heatmap each, and the overall
    # mean cosine is the step-weighted mean of the epochs' means
    counts = raw["epoch_steps"]
    assert len(counts) >= 2 and sum(counts.values()) == raw["steps"]
    weighted = sum(counts[e] * np.array(c) for e, c in raw["epoch_mean_cosine"].items())
    np.testing.assert_allclose(weighted / raw["steps"], cos, rtol=1e-12)
    for epoch in counts:
        assert (out / f"conflict_epoch{epoch}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![epoch {epoch}](conflict_epoch{epoch}.png)" in summary


def test_diagnose_unknown_benchmark_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["diagnose", "--benchmark", "nope", "--out", str(tmp_path / "d")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taskbalance diagnose: error:") and "nope" in err
    assert "\n" not in err


def test_diagnose_report_files_are_written_atomically_as_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskbalance.experiments.diagnose import DiagnoseResult, write_report

    rng = np.random.default_rng(0)
    S, T = 4, 2
    cos = np.tile(np.eye(T), (S, 1, 1))
    cos[:, 0, 1] = cos[:, 1, 0] = [-0.5, 0.2, -0.1, 0.3]
    result = DiagnoseResult(
        ["a", "b"], 1e-3, rng.uniform(0.5, 2.0, (S, T)), rng.uniform(0.5, 2.0, (S, T)), cos
    )
    log = tmp_path / "writes.log"
    monkeypatch.setenv("TASKBALANCE_FAULT_LOG", str(log))
    out = tmp_path / "diag"
    out.mkdir()
    (out / ".summary.md.k1ll.tmp").write_text("# half a report")  # a killed earlier write
    summary = write_report(result, out, "toy")
    written = {Path(line.split(" ", 1)[1]).name for line in log.read_text().splitlines()}
    # Atomic writes (a killed call never leaves a half report), the same helper as every command.
    assert {"summary.md", "diagnostics.json"} <= written
    # UTF-8 whatever the platform's default encoding: the summary holds '‖' and '≈'.
    text = summary.read_bytes().decode("utf-8")
    assert "‖g_t‖" in text and "≈" in text
    assert json.loads((out / "diagnostics.json").read_text(encoding="utf-8"))["steps"] == S
    assert not list(out.glob(".*.tmp"))  # the killed write's temporary file is removed


@pytest.mark.parametrize("lr", ["nan", "-1", "0", "inf"])
def test_diagnose_refuses_a_bad_lr_before_training(
    lr: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    argv = ["diagnose", "--benchmark", "multidigits", "--size", "tiny", "--steps", "2"]
    assert main([*argv, "--lr", lr, "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"taskbalance diagnose: error: lr must be a finite number > 0, got {float(lr)!r}"
    assert not out.exists()  # refused before the run, not after it


@pytest.mark.parametrize("seed", [0, 1])
def test_diagnose_recovers_the_planted_grouping(seed: int) -> None:
    """On synthetic-groups the best split into two groups is the planted one."""
    from taskbalance.data.synthetic_groups import GROUPS
    from taskbalance.experiments.diagnose import analyse, run_diagnose

    result = run_diagnose("synthetic-groups", steps=200, seed=seed)
    stats = analyse(result)
    two = stats["groupings"][1]
    found = {frozenset(result.task_names[i] for i in g) for g in two.groups}
    assert found == {frozenset(g) for g in GROUPS}
    # and the reason: every pair inside a group helps more than any pair across
    Z = stats["affinity"]
    idx = {n: i for i, n in enumerate(result.task_names)}
    inside = [Z[idx[s], idx[t]] for g in GROUPS for s in g for t in g if s != t]
    across = [Z[idx[s], idx[t]] for s in GROUPS[0] for t in GROUPS[1]]
    across += [Z[idx[t], idx[s]] for s in GROUPS[0] for t in GROUPS[1]]
    assert np.mean(inside) > 3 * max(np.max(across), 0.0)


def test_a_rerun_leaves_no_epoch_heatmap_of_the_earlier_diagnose(tmp_path: Path) -> None:
    # an earlier diagnose of more epochs wrote conflict_epoch9.png; this one has no epoch 9,
    # so the folder must not show that heatmap beside the new summary
    from taskbalance.experiments.diagnose import DiagnoseResult, write_report

    rng = np.random.default_rng(0)
    S, T = 4, 2
    cos = np.tile(np.eye(T), (S, 1, 1))
    result = DiagnoseResult(
        ["a", "b"], 1e-3, rng.uniform(0.5, 2.0, (S, T)), rng.uniform(0.5, 2.0, (S, T)), cos
    )
    out = tmp_path / "diag"
    out.mkdir()
    (out / "conflict_epoch9.png").write_bytes(b"old")
    (out / "notes.png").write_bytes(b"mine")  # not diagnose's: left alone
    write_report(result, out, "toy")
    assert not (out / "conflict_epoch9.png").exists()
    assert (out / "notes.png").read_bytes() == b"mine" and (out / "conflict.png").is_file()


def test_heatmaps_of_many_epochs_are_capped_evenly_and_the_table_keeps_every_epoch(
    tmp_path: Path,
) -> None:
    from taskbalance.experiments.diagnose import DiagnoseResult, heatmap_epochs, write_report

    assert heatmap_epochs([0, 1, 2]) == [0, 1, 2]
    # 20 epochs, cap 8: indices round(linspace(0, 19, 8)) = 0, 3, 5, 8, 11, 14, 16, 19
    assert heatmap_epochs(list(range(20)), cap=8) == [0, 3, 5, 8, 11, 14, 16, 19]
    rng = np.random.default_rng(0)
    S, T = 20, 2
    result = DiagnoseResult(
        ["a", "b"], 1e-3, rng.uniform(0.5, 2.0, (S, T)), rng.uniform(0.5, 2.0, (S, T)),
        np.tile(np.eye(T), (S, 1, 1)), epochs=np.arange(S),  # one step per epoch
    )  # fmt: skip
    out = tmp_path / "diag"
    summary = write_report(result, out, "toy").read_text()
    files = out.glob("conflict_epoch*.png")
    heatmaps = sorted(int(p.stem.removeprefix("conflict_epoch")) for p in files)
    assert heatmaps == [1, 4, 6, 9, 12, 15, 17, 20]
    assert "Heatmaps of 8 of the 20 epochs" in summary
    table_rows = [line for line in summary.splitlines() if line.startswith("| 20 | 1 |")]
    assert len(table_rows) == 1  # the last epoch's row is in the table
    assert len(json.loads((out / "diagnostics.json").read_text())["epoch_steps"]) == 20
