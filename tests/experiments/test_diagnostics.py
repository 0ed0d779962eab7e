"""The diagnose analysis functions against hand and numpy computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from taskbalance.experiments.diagnostics import (
    best_groupings,
    conflict_stats,
    gramians_from_stats,
    grouping_score,
    loss_scale_ratios,
    norm_ratios_to_median,
    recommend_family,
    set_partitions,
    tag_affinity,
)


def test_conflict_stats_by_hand_with_missing_step() -> None:
    c = np.array(
        [
            [[1.0, -0.5], [-0.5, 1.0]],
            [[1.0, 0.3], [0.3, 1.0]],
            [[1.0, np.nan], [np.nan, 1.0]],  # task absent: pair left out
        ]
    )
    mean, neg = conflict_stats(c)
    assert mean[0, 1] == pytest.approx((-0.5 + 0.3) / 2)
    assert neg[0, 1] == pytest.approx(0.5)
    assert mean[0, 0] == pytest.approx(1.0) and neg[0, 0] == 0.0


def test_norm_ratios_and_loss_scale() -> None:
    norms = np.array([[1.0, 2.0, 8.0], [3.0, 3.0, 3.0]])
    np.testing.assert_allclose(norm_ratios_to_median(norms), [[0.5, 1.0, 4.0], [1.0, 1.0, 1.0]])
    losses = np.array([[1.0, 10.0, 100.0], [3.0, 10.0, 300.0]])  # means 2, 10, 200
    np.testing.assert_allclose(loss_scale_ratios(losses), [0.2, 1.0, 20.0])


def test_tag_affinity_matches_exact_lookahead_on_quadratics() -> None:
    # L_t(θ) = ½‖θ - c_t‖²: g_t = θ - c_t. For a small lr the exact TAG lookahead
    # 1 - L_j(θ - lr g_i)/L_j(θ) agrees with the first-order estimate to O(lr²).
    rng = np.random.default_rng(0)
    T, d, S, lr = 3, 5, 4, 1e-4
    centres = rng.normal(size=(T, d))
    thetas = rng.normal(size=(S, d))
    grads = thetas[:, None, :] - centres[None]  # [S, T, d]
    losses = 0.5 * (grads**2).sum(-1)
    G = np.einsum("std,sud->stu", grads, grads)
    exact = np.zeros((T, T))
    for s, i, j in itertools.product(range(S), range(T), range(T)):
        after = 0.5 * ((thetas[s] - lr * grads[s, i] - centres[j]) ** 2).sum()
        exact[i, j] += (1 - after / losses[s, j]) / S
    Z = tag_affinity(G, losses, lr)
    np.testing.assert_allclose(Z, exact, rtol=1e-3)
    # The Gramian rebuilt from norms and cosines is the same Gramian.
    norms = np.sqrt(np.einsum("stt->st", G))
    cos = G / (norms[:, :, None] * norms[:, None, :])
    np.testing.assert_allclose(gramians_from_stats(norms, cos), G, rtol=1e-12)


def test_set_partitions_count_is_bell_number_and_unique() -> None:
    for n, bell in [(1, 1), (2, 2), (3, 5), (4, 15), (5, 52), (6, 203)]:
        parts = list(set_partitions(n))
        assert len(parts) == bell
        canon = {tuple(sorted(tuple(sorted(g)) for g in p)) for p in parts}
        assert len(canon) == bell
        assert all(sorted(i for g in p for i in g) == list(range(n)) for p in parts)


def test_best_groupings_recovers_planted_split() -> None:
    # Tasks {0, 1, 2} help each other, {3, 4} help each other, across the blocks they hurt.
    T = 5
    Z = np.full((T, T), -0.2)
    for block in ([0, 1, 2], [3, 4]):
        for i, j in itertools.product(block, block):
            Z[i, j] = 0.5
    res = best_groupings(Z)
    assert [g.k for g in res] == [1, 2, 3, 4, 5]
    assert res[1].groups == ((0, 1, 2), (3, 4))
    assert res[1].score == pytest.approx(5 * 0.5)
    # k = 1: each task's mean over the 4 others, by hand: block of 3 -> (2·0.5 + 2·(-0.2))/4,
    # block of 2 -> (0.5 + 3·(-0.2))/4.
    assert res[0].score == pytest.approx(3 * 0.15 + 2 * (-0.025))
    assert res[4].score == 0.0  # all alone: no transfer
    assert grouping_score(Z, [[0, 3], [1, 2, 4]]) < res[1].score


def test_best_groupings_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at most 8 tasks"):
        best_groupings(np.zeros((9, 9)))
    with pytest.raises(ValueError, match="non-finite"):
        best_groupings(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="lr must be"):
        tag_affinity(np.zeros((1, 2, 2)), np.ones((1, 2)), lr=0.0)


def test_recommend_family_thresholds() -> None:
    neg = np.array([[0.0, 0.6], [0.6, 0.0]])
    hyp, ev = recommend_family(np.array([1.0, 5.0]), np.array([1.0, 1.0]), neg)
    assert ev == {"norm_spread": 5.0, "loss_spread": 1.0, "conflict_rate": 0.6}
    assert len(hyp) == 2 and "loss weighting" in hyp[0] and "aggregation" in hyp[1]
    hyp, _ = recommend_family(np.ones(2), np.ones(2), np.zeros((2, 2)))
    assert hyp == ["no strong symptom: ew is expected to be competitive"]
