"""``taskbalance diagnose``: a short equal-weights run, then conflict, dominance, affinity and a
recommendation (markdown + PNG), from the per-task gradient statistics of every step.

The run trains with equal weights in param mode through the ordinary
:class:`~taskbalance.training.Trainer`; the update is ``Σ_t g_t`` (what ``ew`` does) but taken as
a gradient method, so the Balancer computes the per-task Gramian each step and
:class:`~taskbalance.balancing.StepInfo` carries norms and cosines. The analysis itself is in
:mod:`taskbalance.experiments.diagnostics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from taskbalance.balancing.base import GradientMethod
from taskbalance.fileio import atomic_write_json, atomic_write_text, remove_stale_temporaries
from taskbalance.validation import check_positive

from . import diagnostics as dg
from .plots import _pyplot, _save
from .tables import markdown_table

__all__ = ["DiagnoseResult", "analyse", "collect_steps", "run_diagnose", "write_report"]


class _EqualGradientSum(GradientMethod):
    """``d = Σ_t g_t`` (equal weights) from the Gramian, so per-task statistics exist."""

    name = "ew"
    uses_gramian = True

    def _weights(
        self, G: Tensor, losses: Tensor | None, present: Tensor | None, *, grad_dtype: torch.dtype
    ) -> Tensor:
        return torch.ones(G.shape[0], dtype=torch.float64)


@dataclass
class DiagnoseResult:
    """Per-step arrays of a diagnose run (steps where every task had a label)."""

    task_names: list[str]
    lr: float
    losses: np.ndarray  # [S, T]
    norms: np.ndarray  # [S, T]
    cosines: np.ndarray  # [S, T, T]
    epochs: np.ndarray | None = None  # [S]: the pass over the training data of each step (0, 1..)


def collect_steps(
    trainer: Any, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train ``steps`` steps (cycling the loader) and stack losses, norms, cosines and the
    epoch (pass over the loader) of the steps where all tasks were present."""
    losses, norms, cosines, epochs = [], [], [], []
    done = epoch = 0
    while done < steps:
        before = done
        for batch in trainer.train_loader:
            info = trainer.train_step(batch)
            done += 1
            if info is not None and info.cosines is not None and bool(info.present.all()):
                losses.append(info.losses.double().cpu().numpy())
                norms.append(info.grad_norms.double().cpu().numpy())
                cosines.append(info.cosines.double().cpu().numpy())
                epochs.append(epoch)
            if done >= steps:
                break
        if done == before:
            raise ValueError("the training loader yielded no batch")
        epoch += 1
    if not losses:
        raise ValueError(
            f"none of the {steps} steps had a label for every task; raise --steps or use a "
            "benchmark with full labels"
        )
    return np.stack(losses), np.stack(norms), np.stack(cosines), np.asarray(epochs)


def run_diagnose(
    benchmark: str,
    *,
    steps: int = 200,
    seed: int = 0,
    size: str = "default",
    batch_size: int = 64,
    lr: float = 1e-3,
    device: str = "cpu",
    dataset: str | None = None,
    data_root: str | None = None,
    experiment: str | None = None,
) -> DiagnoseResult:
    """Train ``steps`` equal-weights steps on a built-in benchmark (or on the real ``dataset`` in
    ``data_root``, or on the ``experiment`` file's data and model; then ``benchmark`` is
    ignored); return the step statistics."""
    # Before any work: the optimiser would name a bad lr in torch's words, or, for lr 0, the
    # affinity would refuse it only after the whole run.
    check_positive("lr", lr)
    from taskbalance.training import TrainConfig, Trainer
    from taskbalance.training.devices import seed_everything
    from taskbalance.training.loaders import make_loaders
    from taskbalance.training.sources import load_data

    if experiment is not None:
        config = TrainConfig(experiment=experiment, seed=seed)
    elif dataset is not None:
        config = TrainConfig(dataset=dataset, data_root=data_root, seed=seed)
    else:
        config = TrainConfig(benchmark=benchmark, size=size, seed=seed)
    bench = load_data(config)
    names = [t.name for t in bench.tasks]
    seed_everything(seed)
    model = bench.build_model()
    train_loader, _, _ = make_loaders(bench.train, None, batch_size=batch_size, seed=seed)
    trainer = Trainer(
        model, bench.tasks, _EqualGradientSum(len(names)), train_loader, None,
        mode="param", device=device, lr=lr, progress=False, save_best=False,
    )  # fmt: skip
    trainer.model.train()
    losses, norms, cosines, epochs = collect_steps(trainer, steps)
    return DiagnoseResult(names, lr, losses, norms, cosines, epochs)


def analyse(result: DiagnoseResult) -> dict[str, Any]:
    """Every statistic of the report, as plain numbers and arrays."""
    mean_cos, neg_frac = dg.conflict_stats(result.cosines)
    ratios = dg.norm_ratios_to_median(result.norms)
    mean_ratios = np.nanmean(ratios, axis=0)
    loss_ratios = dg.loss_scale_ratios(result.losses)
    G = dg.gramians_from_stats(result.norms, result.cosines)
    affinity = dg.tag_affinity(G, result.losses, result.lr)
    groupings = dg.best_groupings(affinity)
    hypotheses, evidence = dg.recommend_family(mean_ratios, loss_ratios, neg_frac)
    per_epoch = {}
    if result.epochs is not None:
        for e in np.unique(result.epochs):
            per_epoch[int(e)] = dg.conflict_stats(result.cosines[result.epochs == e])[0]
    return {
        "mean_cosine": mean_cos, "negative_fraction": neg_frac, "norm_ratios": ratios,
        "mean_norm_ratios": mean_ratios, "loss_scale_ratios": loss_ratios,
        "affinity": affinity, "groupings": groupings, "hypotheses": hypotheses,
        "evidence": evidence, "epoch_cosine": per_epoch,
    }  # fmt: skip


def _heatmap(plt: Any, matrix: np.ndarray, names: list[str], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.0 * len(names) + 2))
    lim = float(np.nanmax(np.abs(matrix))) or 1.0
    im = ax.imshow(matrix, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2g}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    _save(fig, path)


def _plots(result: DiagnoseResult, stats: dict[str, Any], out: Path) -> list[str]:

    plt = _pyplot()
    names = result.task_names
    _heatmap(plt, stats["mean_cosine"], names, "mean gradient cosine", out / "conflict.png")
    _heatmap(
        plt, stats["affinity"], names, "TAG affinity Z[i->j] (row i helps column j)",
        out / "affinity.png",
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4))
    for t, n in enumerate(names):
        ax.plot(stats["norm_ratios"][:, t], label=n)
    ax.set_yscale("log")
    ax.set_xlabel("measured step")
    ax.set_ylabel("‖g_t‖ / median_t ‖g_t‖")
    ax.legend(fontsize=8)
    _save(fig, out / "dominance.png")
    files = ["conflict.png", "affinity.png", "dominance.png"]
    for epoch in heatmap_epochs(list(stats["epoch_cosine"])):
        name = f"conflict_epoch{epoch + 1}.png"
        cos = stats["epoch_cosine"][epoch]
        _heatmap(plt, cos, names, f"mean gradient cosine, epoch {epoch + 1}", out / name)
        files.append(name)
    return files


#: At most this many per-epoch heatmaps (a short run over tiny data has hundreds of epochs).
MAX_EPOCH_HEATMAPS = 8


def heatmap_epochs(epochs: list[int], cap: int = MAX_EPOCH_HEATMAPS) -> list[int]:
    """The epochs that get a heatmap: all of them up to ``cap``, else ``cap`` evenly spaced ones
    from the first to the last (the table and diagnostics.json keep every epoch)."""
    if len(epochs) <= cap:
        return list(epochs)
    picks = np.unique(np.round(np.linspace(0, len(epochs) - 1, cap)).astype(int))
    return [epochs[k] for k in picks]


def _table(names: list[str], matrix: np.ndarray, fmt: str) -> list[str]:
    rows = [[n, *(format(v, fmt) for v in matrix[i])] for i, n in enumerate(names)]
    return markdown_table(["", *names], rows)


def _epoch_lines(
    names: list[str], per_epoch: dict[int, np.ndarray], epochs: np.ndarray | None
) -> list[str]:
    """Mean cosine of every pair per epoch (a pass over the training data), with the heatmaps."""
    if not per_epoch or epochs is None:
        return []
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    header = ["epoch", "steps", *(f"{names[i]}~{names[j]}" for i, j in pairs)]
    rows = [
        [str(e + 1), str(int(np.sum(epochs == e))), *(f"{cos[i, j]:.3f}" for i, j in pairs)]
        for e, cos in per_epoch.items()
    ]
    lines = ["Mean pairwise cosine per epoch (pass over the training data):", "",
             *markdown_table(header, rows)]  # fmt: skip
    shown = heatmap_epochs(list(per_epoch))
    images = " ".join(f"![epoch {e + 1}](conflict_epoch{e + 1}.png)" for e in shown)
    note = [] if len(shown) == len(per_epoch) else [
        f"Heatmaps of {len(shown)} of the {len(per_epoch)} epochs, evenly spaced.", ""
    ]  # fmt: skip
    return [*lines, "", *note, images, ""]


def _markdown(result: DiagnoseResult, stats: dict[str, Any], benchmark: str) -> str:
    names = result.task_names
    ev = stats["evidence"]
    md = [
        f"# diagnose: {benchmark}", "",
        f"{len(result.losses)} measured equal-weights steps (all tasks labelled), lr {result.lr}.",
        "", "## Gradient conflict", "", "Mean pairwise cosine:", "",
        *_table(names, stats["mean_cosine"], ".3f"), "",
        "Fraction of steps with a negative cosine:", "",
        *_table(names, stats["negative_fraction"], ".2f"), "", "![conflict](conflict.png)", "",
        *_epoch_lines(names, stats["epoch_cosine"], result.epochs),
        "## Magnitude dominance", "",
        *markdown_table(
            ["task", "mean ‖g_t‖ / median", "mean loss / median"],
            [
                [n, f"{stats['mean_norm_ratios'][t]:.3g}", f"{stats['loss_scale_ratios'][t]:.3g}"]
                for t, n in enumerate(names)
            ],
        ),
        "", "![dominance](dominance.png)", "", "## Inter-task affinity (TAG)", "",
        "First-order estimate of TAG's lookahead affinity (Fifty et al. 2021, arXiv:2109.04617):",
        "Z[i->j] ≈ lr·g_i·g_j / L_j, the relative drop of task j's loss after an SGD step of",
        "size lr on task i's gradient, averaged over the measured steps (no extra forward).", "",
        *_table(names, stats["affinity"], ".3g"), "", "![affinity](affinity.png)", "",
        "## Recommendation (hypotheses to test with `taskbalance compare`)", "",
        "Best split into k groups by TAG's total affinity (exhaustive, disjoint groups):", "",
        *markdown_table(
            ["k", "groups", "score"],
            [
                [str(g.k), " ; ".join(",".join(names[i] for i in grp) for grp in g.groups),
                 f"{g.score:.3g}"]
                for g in stats["groupings"]
            ],
        ),
        "",
        f"Evidence: norm spread {ev['norm_spread']:.3g}, loss-scale spread "
        f"{ev['loss_spread']:.3g} (threshold {dg.DOMINANCE_THRESHOLD}), conflict rate "
        f"{ev['conflict_rate']:.2f} (threshold {dg.CONFLICT_THRESHOLD}).", "",
        *(f"- {h}" for h in stats["hypotheses"]), "",
    ]  # fmt: skip
    return "\n".join(md)


def write_report(result: DiagnoseResult, out: str | Path, benchmark: str) -> Path:
    """Write ``summary.md``, ``diagnostics.json`` and the PNG plots to ``out``; return the
    summary's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # left by an earlier diagnose killed while writing
    for old in out.glob("conflict_epoch*.png"):  # an earlier diagnose may have had more epochs
        old.unlink()
    stats = analyse(result)
    _plots(result, stats, out)
    atomic_write_text(out / "summary.md", _markdown(result, stats, benchmark))
    raw = {
        "tasks": result.task_names, "lr": result.lr, "steps": len(result.losses),
        "mean_cosine": stats["mean_cosine"].tolist(),
        "negative_fraction": stats["negative_fraction"].tolist(),
        "mean_norm_ratios": stats["mean_norm_ratios"].tolist(),
        "loss_scale_ratios": stats["loss_scale_ratios"].tolist(),
        "affinity": stats["affinity"].tolist(),
        "groupings": [{"k": g.k, "groups": [list(x) for x in g.groups], "score": g.score}
                      for g in stats["groupings"]],
        "hypotheses": stats["hypotheses"], "evidence": stats["evidence"],
        "epoch_mean_cosine": {str(e + 1): c.tolist() for e, c in stats["epoch_cosine"].items()},
        "epoch_steps": {str(e + 1): int(np.sum(result.epochs == e))
                        for e in stats["epoch_cosine"]},
    }  # fmt: skip
    atomic_write_json(out / "diagnostics.json", raw)
    return out / "summary.md"
