"""lam.seeds.review: which frames a reviewer sees (uncertain, diverse, QC-flagged, rare)."""

from __future__ import annotations

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.seeds.review import (
    class_rarity,
    coverage_scores,
    random_for_review,
    rank_for_review,
    uncertainty_scores,
)


def _scenes(n_per: int = 4, dims: int = 8, seed: int = 0) -> np.ndarray:
    """Three scenes, each a tight cluster of `n_per` near-identical frames."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dims)[:3] * 5
    return np.concatenate([c + rng.normal(0, 0.05, (n_per, dims)) for c in centres])


def test_uncertainty_and_rarity_are_bounded_and_ordered() -> None:
    unc = uncertainty_scores(np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0]))
    assert unc.tolist() == [0.0, 0.5, 1.0]
    rarity = class_rarity(np.array([1_000_000, 1_000, 0]))
    assert rarity[0] == 0.0 and rarity[2] == 1.0 and 0 < rarity[1] < 1
    cov = coverage_scores(np.array([[1.0, 0.0, 0.0], [0.9, 0.0, 0.01]]), rarity)
    assert cov[1] == 1.0 and cov[0] == 0.0  # a frame showing a thin unseen class wins
    with pytest.raises(LamflowError, match="must be \\(N, C=3\\)"):
        coverage_scores(np.zeros((2, 2)), rarity)


def test_diversity_spreads_picks_over_scenes_not_near_copies() -> None:
    emb = _scenes()
    unc = np.full(12, 0.5)
    unc[:4] = [0.9, 0.89, 0.88, 0.87]  # scene 0 is the most uncertain, by far
    # no near-copy suppression: the distance term alone must spread the picks
    picks = rank_for_review(
        emb, unc, np.zeros(12), np.zeros(12, bool), budget=3, dedupe_threshold=1.01
    )
    assert [p.rank for p in picks] == [1, 2, 3]
    assert picks[0].index == 0
    scenes = {p.index // 4 for p in picks}
    assert scenes == {0, 1, 2}, "near-duplicates of the first pick must not take the budget"
    # and with suppression, a scene's best frame (not its first) represents it
    unc[4:8] = [0.1, 0.1, 0.6, 0.1]
    picks = rank_for_review(emb, unc, np.zeros(12), np.zeros(12, bool), budget=2)
    assert [p.index for p in picks] == [0, 6]
    assert all(p.reasons for p in picks) and "distance" in picks[1].reasons[-1]


def test_qc_flagged_frames_come_first_with_their_reason() -> None:
    emb = _scenes()
    unc = np.linspace(0.9, 0.1, 12)
    flagged = np.zeros(12, bool)
    flagged[11] = True  # the least uncertain frame, but QC flagged it
    picks = rank_for_review(
        emb,
        unc,
        np.zeros(12),
        flagged,
        budget=2,
        flag_reasons=[["mean_confidence=0.3 outside [0.5, 1]"] if f else [] for f in flagged],
    )
    assert picks[0].index == 11 and picks[0].flagged
    assert "qc flagged: mean_confidence=0.3" in picks[0].reasons[0]
    assert picks[0].score > picks[1].score

    # the task score (Label Studio's sort key) keeps a flagged frame above every other, even
    # when the weights let an unflagged frame's priority exceed 1
    cov = np.ones(12)
    top = rank_for_review(emb, np.ones(12), cov, flagged, budget=12, dedupe_threshold=1.01)
    assert top[0].flagged and all(top[0].score > c.score for c in top[1:])
    assert all(0.0 <= c.score <= 1.0 for c in top)  # Label Studio shows it as a percentage


def test_coverage_pulls_in_the_frame_with_a_rare_class() -> None:
    emb = _scenes()
    cov = np.zeros(12)
    cov[6] = 1.0
    picks = rank_for_review(
        emb,
        np.full(12, 0.2),
        cov,
        np.zeros(12, bool),
        budget=1,
        coverage_weight=0.5,
        rare_classes=[["bicyclist"] if i == 6 else [] for i in range(12)],
    )
    assert picks[0].index == 6 and "bicyclist" in picks[0].reasons[1]


def test_budget_edges_and_bad_input() -> None:
    emb = _scenes(n_per=1)
    z = np.zeros(3)
    assert rank_for_review(emb, z, z, z.astype(bool), budget=0) == []
    assert len(rank_for_review(emb, z, z, z.astype(bool), budget=10)) == 3
    with pytest.raises(LamflowError, match="uncertainty must be \\(N=3,\\)"):
        rank_for_review(emb, np.zeros(2), z, z.astype(bool), budget=1)
    with pytest.raises(LamflowError, match=">= 0"):
        rank_for_review(emb, z, z, z.astype(bool), budget=-1)


def test_random_baseline_is_reproducible_and_distinct() -> None:
    a = random_for_review(50, 5, seed=3)
    assert [c.index for c in a] == [c.index for c in random_for_review(50, 5, seed=3)]
    assert len({c.index for c in a}) == 5
    assert [c.index for c in a] != [c.index for c in random_for_review(50, 5, seed=4)]
    assert len(random_for_review(2, 5)) == 2
