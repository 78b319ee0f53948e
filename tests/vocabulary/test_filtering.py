"""Filtering math (LLM2Labels Eq. 3 combiners and thresholds) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from lam.vocabulary.filtering import (
    LabelEvidence,
    accumulate,
    combine,
    rank_labels,
    threshold_mask,
)


@pytest.mark.parametrize(
    ("how", "expected"), [("avg", 0.65), ("product", 0.4), ("min", 0.5), ("max", 0.8)]
)
def test_combiners(how, expected):
    assert combine([0.5, 0.8], how) == pytest.approx(expected)


def test_product_of_many_small_probabilities_does_not_underflow_early():
    assert combine([0.1] * 300, "product") == pytest.approx(1e-300, rel=1e-9)
    assert combine([0.5, 0.0], "product") == 0.0
    assert combine([0.9] * 10, "product") == pytest.approx(0.9**10)


@pytest.mark.parametrize(
    ("values", "how", "match"),
    [([], "avg", "empty"), ([0.5], "mean", "unknown combiner 'mean'"), ([1.5], "max", r"\[0, 1\]")],
)
def test_combine_rejects_bad_input(values, how, match):
    with pytest.raises(ValueError, match=match):
        combine(values, how)


SCORES = [0.1, 0.2, 0.7, 0.9]


@pytest.mark.parametrize(
    ("mode", "percentile", "expected"),
    [
        # 0.68 quantile of SCORES (linear): index 3 * 0.68 = 2.04 -> 0.7 + 0.04 * 0.2 = 0.708
        ("percentile", 0.68, [False, False, False, True]),
        ("percentile", 0.5, [False, False, True, True]),  # median 0.45
        ("probability", 0.68, [False, False, True, True]),  # >= 0.68
        ("both", 0.68, [False, False, False, True]),
        ("both", 0.5, [False, False, True, True]),
        ("none", 0.68, [True, True, True, True]),
    ],
)
def test_threshold_modes(mode, percentile, expected):
    mask = threshold_mask(SCORES, mode, percentile=percentile, probability=0.68)
    assert mask.tolist() == expected


def test_threshold_rejects_unknown_mode_and_out_of_range():
    with pytest.raises(ValueError, match="'top'"):
        threshold_mask(SCORES, "top")
    with pytest.raises(ValueError, match="percentile must lie in"):
        threshold_mask(SCORES, "percentile", percentile=68)
    assert threshold_mask([], "percentile").shape == (0,)


def _evidence() -> dict[str, LabelEvidence]:
    evidence: dict[str, LabelEvidence] = {}
    # Frame 1: car seen in two views (0.8, 1.0), road once. Frame 2: car once.
    accumulate(evidence, {"car": [0.8, 1.0], "road": [0.6]}, "avg", {"car": "n02958343"})
    accumulate(evidence, {"car": [0.7], "empty": []}, "avg")
    return evidence


def test_accumulate_combines_views_per_frame():
    evidence = _evidence()
    assert evidence["car"].frame_scores == pytest.approx([0.9, 0.7])
    assert evidence["car"].wnid == "n02958343" and evidence["car"].occurrences == 2
    assert "empty" not in evidence


def test_rank_frame_weighted():
    ranked = rank_labels(_evidence().values(), n_frames=4, how="avg", threshold="none")
    # car: avg(0.9, 0.7) = 0.8, seen in 2 of 4 frames -> 0.4; road: 0.6 * 1/4 = 0.15
    assert [r.label for r in ranked] == ["car", "road"]
    assert ranked[0].score == pytest.approx(0.4) and ranked[0].probability == pytest.approx(0.8)
    assert ranked[1].score == pytest.approx(0.15) and ranked[1].frequency == 0.25


def test_rank_thresholds_act_on_probability_and_occurrences():
    ev = _evidence().values()
    kept = rank_labels(ev, 4, how="min", threshold="probability", probability=0.65)
    assert [(r.label, round(r.probability, 3)) for r in kept] == [("car", 0.7)]
    kept = rank_labels(ev, 4, threshold="none", min_occurrences=2, frame_weighting=False)
    assert [(r.label, r.score) for r in kept] == [("car", pytest.approx(0.8))]
    with pytest.raises(ValueError, match="n_frames"):
        rank_labels(ev, 0)


def test_rank_ties_break_by_name():
    ev = [LabelEvidence("b", [0.5]), LabelEvidence("a", [0.5])]
    assert [r.label for r in rank_labels(ev, 1, threshold="none")] == ["a", "b"]
    assert np.isclose(rank_labels(ev, 1, threshold="none")[0].score, 0.5)
