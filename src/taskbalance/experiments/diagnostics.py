"""Pure analysis behind ``taskbalance diagnose``: conflict, dominance, affinity and grouping.

Every function takes plain arrays collected from training steps (one row per measured step) and
returns numpy arrays or small dataclasses, so each can be checked against hand computations.

Inter-task affinity follows TAG (Fifty et al. 2021, "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS, arXiv:2109.04617): ``Z_{i->j} = 1 - L_j(θ - lr·g_i) / L_j(θ)``, the
relative drop of task j's loss after an SGD step on task i's gradient alone. Here it is the
*first-order* estimate ``L_j(θ - lr·g_i) ≈ L_j - lr·g_i·g_j``, i.e. ``Z_{i->j} ≈ lr·G_ij / L_j``
with ``G`` the Gramian of the per-task gradients on the shared parameters: it needs no extra
forward pass (the paper's exact lookahead does one per task).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Grouping",
    "best_groupings",
    "conflict_stats",
    "gramians_from_stats",
    "grouping_score",
    "loss_scale_ratios",
    "norm_ratios_to_median",
    "recommend_family",
    "set_partitions",
    "tag_affinity",
]

#: Exhaustive grouping search is limited to this many tasks (Bell(8) = 4140 partitions).
MAX_EXHAUSTIVE_TASKS = 8


def _steps_tt(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or a.shape[0] == 0:
        raise ValueError(f"{name} must have shape [steps >= 1, T, T], got {a.shape}")
    return a


def _steps_t(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must have shape [steps >= 1, T], got {a.shape}")
    return a


def conflict_stats(cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean pairwise cosine ``[T, T]`` and fraction of steps with a negative cosine ``[T, T]``.

    ``cosines`` is ``[steps, T, T]``; NaN entries (a task absent in that step) are left out of
    both statistics for that pair.
    """
    c = _steps_tt("cosines", cosines)
    valid = ~np.isnan(c)
    counts = valid.sum(axis=0)
    safe = np.where(counts > 0, counts, 1)
    mean = np.where(counts > 0, np.where(valid, c, 0.0).sum(axis=0) / safe, np.nan)
    negative = np.where(counts > 0, (valid & (c < 0)).sum(axis=0) / safe, np.nan)
    return mean, negative


def norm_ratios_to_median(norms: np.ndarray) -> np.ndarray:
    """Per step, each task's gradient norm divided by the median norm over tasks: ``[steps, T]``.

    A task far above 1 dominates the summed gradient; a step whose median norm is 0 gives NaN.
    """
    n = _steps_t("norms", norms)
    med = np.median(n, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(med > 0, n / np.where(med > 0, med, 1.0), np.nan)


def loss_scale_ratios(losses: np.ndarray) -> np.ndarray:
    """Each task's mean loss over steps divided by the median of those means: ``[T]``."""
    mean = _steps_t("losses", losses).mean(axis=0)
    med = float(np.median(mean))
    if med <= 0:
        raise ValueError(f"the median task loss is {med}; loss-scale ratios need positive losses")
    return mean / med


def gramians_from_stats(norms: np.ndarray, cosines: np.ndarray) -> np.ndarray:
    """Rebuild ``G_ij = ‖g_i‖·‖g_j‖·cos(g_i, g_j)`` per step from norms ``[S, T]``, cosines
    ``[S, T, T]`` (what :class:`~taskbalance.balancing.StepInfo` carries)."""
    n = _steps_t("norms", norms)
    c = _steps_tt("cosines", cosines)
    if c.shape[:2] != n.shape:
        raise ValueError(f"norms {n.shape} and cosines {c.shape} disagree on steps or tasks")
    return n[:, :, None] * n[:, None, :] * c


def tag_affinity(gramians: np.ndarray, losses: np.ndarray, lr: float) -> np.ndarray:
    """First-order TAG affinity ``Z[i, j] = mean over steps of lr·G_ij / L_j`` (see module doc).

    ``Z[i, j] > 0``: a step on task i's gradient lowers task j's loss (i helps j). Rows are the
    source task i, columns the target j. Steps where ``L_j <= 0`` are left out for column j.
    """
    G = _steps_tt("gramians", gramians)
    L = _steps_t("losses", losses)
    if G.shape[:2] != L.shape:
        raise ValueError(f"gramians {G.shape} and losses {L.shape} disagree on steps or tasks")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    ok = L > 0  # [S, T]: the relative change of L_j is defined
    with np.errstate(divide="ignore", invalid="ignore"):
        z = lr * G / np.where(ok, L, 1.0)[:, None, :]
    z = np.where(ok[:, None, :], z, 0.0)
    counts = ok.sum(axis=0)[None, :]
    return np.where(counts > 0, z.sum(axis=0) / np.where(counts > 0, counts, 1), np.nan)


def set_partitions(n: int) -> Iterator[list[list[int]]]:
    """Every partition of ``range(n)`` into non-empty groups, each exactly once."""
    if n == 0:
        yield []
        return
    for rest in set_partitions(n - 1):
        last = n - 1
        for g in range(len(rest)):  # put the last item into an existing group ...
            yield [grp + [last] if k == g else list(grp) for k, grp in enumerate(rest)]
        yield [list(grp) for grp in rest] + [[last]]  # ... or into a group of its own


def grouping_score(affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """TAG's total affinity of a split: Σ_j mean_{i in group(j), i ≠ j} Z[i, j].

    A task alone in its group receives no transfer and contributes 0.
    """
    total = 0.0
    for grp in groups:
        for j in grp:
            others = [i for i in grp if i != j]
            if others:
                total += float(np.mean([affinity[i, j] for i in others]))
    return total


@dataclass(frozen=True)
class Grouping:
    """The best split into ``k`` groups and its total affinity score."""

    k: int
    groups: tuple[tuple[int, ...], ...]
    score: float


def best_groupings(affinity: np.ndarray) -> list[Grouping]:
    """For k = 1..T, the disjoint split into k groups with the highest :func:`grouping_score`.

    Exhaustive over all set partitions, so limited to T <= 8. (TAG's own selection lets a task
    sit in several groups; here groups are disjoint: one network per group.)
    """
    Z = np.asarray(affinity, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] != Z.shape[1] or Z.shape[0] == 0:
        raise ValueError(f"affinity must be a square [T, T] matrix, got shape {Z.shape}")
    T = Z.shape[0]
    if T > MAX_EXHAUSTIVE_TASKS:
        raise ValueError(
            f"exhaustive grouping supports at most {MAX_EXHAUSTIVE_TASKS} tasks, got {T}; "
            "diagnose a subset of tasks"
        )
    if not np.all(np.isfinite(Z)):
        raise ValueError("affinity has non-finite entries (a task never measured?)")
    best: dict[int, Grouping] = {}
    for part in set_partitions(T):
        score = grouping_score(Z, part)
        k = len(part)
        if k not in best or score > best[k].score + 1e-15:
            groups = tuple(sorted(tuple(sorted(g)) for g in part))
            best[k] = Grouping(k=k, groups=groups, score=score)
    return [best[k] for k in range(1, T + 1)]


#: Symptom thresholds (heuristics, reported with the numbers so the user can judge them).
DOMINANCE_THRESHOLD = 3.0  # max/min of per-task mean norm ratios, or of loss-scale ratios
CONFLICT_THRESHOLD = 0.3  # fraction of steps with a negative cosine, averaged over pairs


def recommend_family(
    mean_norm_ratios: np.ndarray, loss_ratios: np.ndarray, negative_fraction: np.ndarray
) -> tuple[list[str], dict[str, float]]:
    """Which balancing families the symptoms point to, as hypotheses, with the evidence.

    Returns (hypotheses, evidence) where evidence holds ``norm_spread`` (max/min of the per-task
    mean norm ratios), ``loss_spread`` (max/min loss-scale ratio) and ``conflict_rate`` (mean
    off-diagonal fraction of steps with a negative cosine).
    """
    r = np.asarray(mean_norm_ratios, dtype=np.float64)
    lr_ = np.asarray(loss_ratios, dtype=np.float64)
    neg = np.asarray(negative_fraction, dtype=np.float64)
    T = neg.shape[0]
    off = neg[~np.eye(T, dtype=bool)]
    evidence = {
        "norm_spread": float(r.max() / r.min()) if r.min() > 0 else float("inf"),
        "loss_spread": float(lr_.max() / lr_.min()) if lr_.min() > 0 else float("inf"),
        "conflict_rate": float(np.nanmean(off)) if off.size else 0.0,
    }
    hypotheses = []
    if max(evidence["norm_spread"], evidence["loss_spread"]) > DOMINANCE_THRESHOLD:
        hypotheses.append(
            "scale imbalance: loss weighting / normalisation (e.g. uw, dwa, gradnorm) "
            "should beat ew"
        )
    if evidence["conflict_rate"] > CONFLICT_THRESHOLD:
        hypotheses.append(
            "frequent gradient conflicts: gradient aggregation (e.g. pcgrad, cagrad, mgda, "
            "nash_mtl) should beat ew"
        )
    if not hypotheses:
        hypotheses.append("no strong symptom: ew is expected to be competitive")
    return hypotheses, evidence
