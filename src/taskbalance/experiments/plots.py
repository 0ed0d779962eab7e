"""Figures of a comparison: one function per figure; each writes a PNG and returns its path.

Inputs are plain data read from ``results.json`` files. Histories are the ``history`` lists of
runs: one dict per epoch with ``epoch``, ``val`` (``{task: {metric: value}}``) and ``weights``
(``{task: weight}``, a list in task order, or missing/``None`` for methods without weights).
Matplotlib's non-interactive Agg backend is used; nothing opens a window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import mean_std, pareto_front

__all__ = [
    "delta_bar_labels",
    "plot_delta_bars",
    "plot_pareto",
    "plot_task_weights",
    "plot_validation_curves",
]

History = Sequence[Mapping[str, Any]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.ticker import MaxNLocator

    for ax in fig.get_axes():
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return out


def _grid(n: int, plt: Any, width: float = 4.2, height: float = 3.2) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct colour (and, past 10 names, line style) per name, stable across figures."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    count = 10 if len(names) <= 10 else 20
    return {
        name: {"color": cmap(i % count), "linestyle": "-" if i < count else "--"}
        for i, name in enumerate(names)
    }


def _epoch_series(
    histories: Sequence[History], value: Any
) -> tuple[list[float], list[float], list[float]]:
    """Epochs, mean and std over seeds of ``value(epoch_record)`` (None values are skipped)."""
    by_epoch: dict[float, list[float]] = {}
    for history in histories:
        for rec in history:
            v = value(rec)
            if v is not None and math.isfinite(float(v)):
                by_epoch.setdefault(float(rec.get("epoch", 0)), []).append(float(v))
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [s[0] for s in stats], [s[1] for s in stats]


def _get(mapping: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(mapping, Mapping):
            mapping = mapping.get(key)
        elif isinstance(mapping, Sequence) and isinstance(key, int) and key < len(mapping):
            mapping = mapping[key]
        else:
            return None
    return mapping


def plot_validation_curves(
    histories: Mapping[str, Sequence[History]],
    primary: Mapping[str, str],
    path: str | Path,
    *,
    higher_is_better: Mapping[str, bool] | None = None,
) -> Path:
    """Validation curves: one panel per task, its primary metric vs epoch, one line per method.

    Args:
        histories: method -> one history per seed (mean line, std band when several seeds).
        primary: task -> metric name to plot.
        path: the PNG to write.
        higher_is_better: task -> direction of its primary metric (shown in the panel title).
    """
    plt = _pyplot()
    fig, axes = _grid(len(primary), plt)
    styles = _styles(list(histories))
    for ax, (task, metric) in zip(axes, primary.items(), strict=True):
        for method, runs in histories.items():
            epochs, mean, std = _epoch_series(
                runs, lambda r, t=task, m=metric: _get(r, "val", t, m)
            )
            if not epochs:
                continue
            (line,) = ax.plot(
                epochs, mean, marker="o", markersize=3, label=method, **styles[method]
            )
            if len(runs) > 1:
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15)
        direction = ""
        if higher_is_better is not None and task in higher_is_better:
            direction = " (higher is better)" if higher_is_better[task] else " (lower is better)"
        ax.set_title(f"{task}: validation {metric}{direction}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _weights_of(record: Mapping[str, Any], tasks: Sequence[str]) -> list[float | None]:
    weights = record.get("weights")
    if isinstance(weights, Mapping):
        return [weights.get(t) for t in tasks]
    if isinstance(weights, Sequence) and len(weights) == len(tasks):
        return list(weights)
    return [None] * len(tasks)


def plot_task_weights(
    histories: Mapping[str, Sequence[History]], tasks: Sequence[str], path: str | Path
) -> Path:
    """Task weights over training: one panel per method, one line per task (mean over seeds).

    Methods that report no weights (``weights`` missing or ``None``) get an annotated empty panel.
    """
    plt = _pyplot()
    fig, axes = _grid(len(histories), plt, width=3.6, height=2.8)
    for ax, (method, runs) in zip(axes, histories.items(), strict=True):
        drawn = False
        for i, task in enumerate(tasks):
            epochs, mean, std = _epoch_series(runs, lambda r, i=i: _weights_of(r, tasks)[i])
            if not epochs:
                continue
            drawn = True
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=task)
            if len(runs) > 1:
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                "no task weights reported",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
                color="gray",
            )
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("weight")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pareto(
    points: Mapping[str, tuple[float, float]],
    labels: tuple[str, str],
    path: str | Path,
    *,
    higher_is_better: tuple[bool, bool] = (True, True),
    errors: Mapping[str, tuple[float, float]] | None = None,
    reference: tuple[str, tuple[float, float]] | None = None,
) -> Path:
    """Scatter of two metrics per method with the Pareto front (non-dominated methods) marked.

    Args:
        points: method -> (x, y), usually means over seeds.
        labels: axis labels.
        higher_is_better: direction of x and y (decides the front).
        errors: method -> (std x, std y), drawn as error bars.
        reference: optional ``(name, (x, y))`` drawn as a star, not part of the front (e.g. the
            single-task baselines, which are separate networks).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    front = pareto_front(points, higher_is_better)
    for name, (x, y) in points.items():
        on_front = name in front
        xerr = yerr = None
        if errors and name in errors:
            xerr, yerr = errors[name]
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            markersize=7 if on_front else 5,
            color="tab:red" if on_front else "tab:blue",
            alpha=0.9,
            capsize=2,
        )
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if front:
        xs = [points[n][0] for n in front]
        ys = [points[n][1] for n in front]
        ax.plot(xs, ys, "--", color="tab:red", linewidth=1, label="Pareto front")
    if reference is not None:
        name, (x, y) = reference
        ax.plot([x], [y], marker="*", markersize=12, color="black", linestyle="none", label=name)
    arrow = {True: "→ better", False: "← better"}
    ax.set_xlabel(f"{labels[0]} ({arrow[higher_is_better[0]]})")
    ax.set_ylabel(f"{labels[1]} ({'↑' if higher_is_better[1] else '↓'} better)")
    ax.set_title("Pareto front (red: non-dominated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def delta_bar_labels(names: Sequence[str], marks: Mapping[str, str] | None) -> list[str]:
    """Tick labels of :func:`plot_delta_bars`: each method with its significance marks."""
    return [f"{n} {marks[n]}" if marks and marks.get(n) else n for n in names]


def plot_delta_bars(
    deltas: Mapping[str, tuple[float, float]],
    path: str | Path,
    *,
    seeds: int = 1,
    marks: Mapping[str, str] | None = None,
) -> Path:
    """Bar chart of Δm% per method (lower is better), error bars = std over seeds.

    Args:
        deltas: method -> (mean, std) of Δm% over seeds.
        seeds: number of seeds (shown in the title).
        marks: method -> the leaderboard's significance marks (``*`` differs from ``ew``, ``†``
            from single-task; :func:`~taskbalance.experiments.report.significance_marks`),
            appended to its label.
    """
    plt = _pyplot()
    names = sorted(deltas, key=lambda n: deltas[n][0])
    means = [deltas[n][0] for n in names]
    stds = [deltas[n][1] for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 4.0))
    colors = ["tab:green" if m < 0 else "tab:orange" for m in means]
    ax.bar(range(len(names)), means, yerr=stds if seeds > 1 else None, color=colors, capsize=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(delta_bar_labels(names, marks), rotation=45, ha="right")
    ax.set_ylabel("Δm% vs single-task (lower is better)")
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    legend = "; * differs from ew, † from single-task (paired t-test, p < 0.05)" if marks else ""
    ax.set_title(f"Δm% per method ({spread}{legend})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
