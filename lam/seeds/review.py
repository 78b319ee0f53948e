"""Which labeled frames of a drop a human should review: uncertain, diverse, QC-flagged, rare.

A drop has just been labeled; a reviewer will correct a budget of B frames, and each corrected
frame becomes a seed. A frame is worth their time when

* the model is unsure of it (**uncertainty**: low mean confidence, many low-confidence pixels),
* it shows what the seed set holds least of (**coverage**: classes with few seed pixels),
* QC flagged it (**flagged** frames go first: a human should see what failed a check),
* and it is not a near-copy of a frame already chosen (**diversity**).

Diversity reuses the seed selector's machinery (`lam.seeds.select`: unit embeddings and
pairwise distances): frames are picked greedily as in k-center, but each candidate's distance
to the nearest pick is weighted by its priority, `priority * (1 + distance / median
distance)`. The first pick is the highest priority; later picks trade priority against
novelty. Each pick also removes its near-copies (cosine >= `dedupe_threshold`) from the pool:
unlike seed selection's up-front de-duplication, which keeps a group's first frame, this keeps
the group's most useful one (the flagged, the uncertain). Deterministic: ties break by frame
order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.seeds.select import _check_embeddings, _pairwise_dist


@dataclass
class ReviewChoice:
    """One frame chosen for review. `index` indexes the arrays given to `rank_for_review`."""

    index: int
    rank: int
    score: float  # the review priority in [0, 1] (higher = sooner), also the task's score
    uncertainty: float
    coverage: float
    flagged: bool
    distance: float  # to the nearest frame picked before it (0 for the first)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def uncertainty_scores(mean_confidence: np.ndarray, low_fraction: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: mean of (1 - mean confidence) and the share of low-confidence pixels."""
    conf = np.clip(np.asarray(mean_confidence, dtype=np.float64), 0.0, 1.0)
    low = np.clip(np.asarray(low_fraction, dtype=np.float64), 0.0, 1.0)
    if conf.shape != low.shape or conf.ndim != 1:
        raise LamflowError(
            f"mean_confidence and low_fraction must be (N,), got {conf.shape} and {low.shape}"
        )
    return 0.5 * ((1.0 - conf) + low)


def class_rarity(seed_pixels: np.ndarray) -> np.ndarray:
    """(C,) in [0, 1]: 1 for a class with no seed pixel, falling with its log share.

    rarity_c = log(share_max / share_c) / log(share_max / share_min), with zero counts clamped
    to one pixel; log, because seed class shares span 4-5 orders of magnitude (road vs pole).
    """
    counts = np.maximum(np.asarray(seed_pixels, dtype=np.float64), 1.0)
    if counts.ndim != 1 or counts.size == 0:
        raise LamflowError(f"seed_pixels must be (C,) with C >= 1, got {counts.shape}")
    logs = np.log(counts)
    span = logs.max() - logs.min()
    return np.ones_like(logs) if span <= 0 else (logs.max() - logs) / span


def coverage_scores(fractions: np.ndarray, rarity: np.ndarray) -> np.ndarray:
    """(N,): how much of what the seed set lacks a frame shows, sum_c rarity_c * sqrt(frac_ic).

    sqrt: a thin class (a pole is 0.5% of a frame) should count, not vanish next to road.
    `fractions` is (N, C), the predicted share of each class in each frame.
    """
    frac = np.clip(np.asarray(fractions, dtype=np.float64), 0.0, 1.0)
    if frac.ndim != 2 or frac.shape[1] != len(rarity):
        raise LamflowError(f"fractions must be (N, C={len(rarity)}), got {frac.shape}")
    raw = np.sqrt(frac) @ np.asarray(rarity, dtype=np.float64)
    top = raw.max() if raw.size else 0.0
    return raw / top if top > 0 else raw


def rank_for_review(
    embeddings: np.ndarray,
    uncertainty: np.ndarray,
    coverage: np.ndarray,
    flagged: np.ndarray,
    budget: int,
    uncertainty_weight: float = 1.0,
    coverage_weight: float = 0.5,
    dedupe_threshold: float = 0.95,
    rare_classes: Sequence[Sequence[str]] | None = None,
    flag_reasons: Sequence[Sequence[str]] | None = None,
) -> list[ReviewChoice]:
    """Choose up to `budget` frames to review, ranked, each with the reasons it was chosen.

    Args:
        embeddings: (N, D) float frame embeddings (`lam.seeds.embed`), capture order.
        uncertainty: (N,) in [0, 1] (`uncertainty_scores`).
        coverage: (N,) in [0, 1] (`coverage_scores`).
        flagged: (N,) bool, QC flagged the frame; flagged frames come before all others.
        rare_classes / flag_reasons: optional per-frame text for the reasons.
    Returns:
        at most `budget` choices, rank 1 first; fewer when fewer distinct frames exist.
    """
    unit = _check_embeddings(embeddings)
    n = len(unit)
    unc = np.asarray(uncertainty, dtype=np.float64)
    cov = np.asarray(coverage, dtype=np.float64)
    flag = np.asarray(flagged, dtype=bool)
    for name, arr in (("uncertainty", unc), ("coverage", cov), ("flagged", flag)):
        if arr.shape != (n,):
            raise LamflowError(f"{name} must be (N={n},), got {arr.shape}")
    if budget < 0:
        raise LamflowError(f"review budget must be >= 0, got {budget}")
    if budget == 0 or n == 0:
        return []
    priority = uncertainty_weight * unc + coverage_weight * cov
    # The task score of a flagged frame exceeds every unflagged one's (priority is at most the
    # sum of the weights), so Label Studio's score-sorted tab also shows flagged frames first.
    flag_bonus = uncertainty_weight + coverage_weight + 1.0
    # ... and scores lie in [0, 1], as Label Studio shows a prediction score as a percentage.
    score_scale = 2.0 * (uncertainty_weight + coverage_weight) + 1.0
    dist = _pairwise_dist(unit, unit)
    off = dist[~np.eye(n, dtype=bool)]
    scale = float(np.median(off)) if off.size else 1.0
    scale = scale if scale > 0 else 1.0
    nearest = np.full(n, np.inf)
    open_ = np.ones(n, dtype=bool)
    chosen: list[ReviewChoice] = []
    while len(chosen) < budget and open_.any():
        novelty = np.where(np.isinf(nearest), 1.0, 1.0 + nearest / scale)
        gain = priority * novelty
        # QC-flagged frames first: any flagged candidate outranks every unflagged one.
        gain = gain + np.where(flag, float(gain.max()) + 1.0, 0.0)
        gain[~open_] = -np.inf
        i = int(np.argmax(gain))
        gap = 0.0 if np.isinf(nearest[i]) else float(nearest[i])
        reasons = []
        if flag[i]:
            reasons.append("qc flagged: " + "; ".join((flag_reasons or [[]] * n)[i] or ["yes"]))
        reasons.append(f"uncertainty {unc[i]:.3f}")
        rare = list((rare_classes or [[]] * n)[i])
        reasons.append(f"coverage {cov[i]:.3f}" + (f" (shows {', '.join(rare)})" if rare else ""))
        if chosen:
            reasons.append(f"distance {gap:.3f} to the nearest earlier pick")
        chosen.append(
            ReviewChoice(
                index=i,
                rank=len(chosen) + 1,
                score=round(
                    (float(priority[i]) + (flag_bonus if flag[i] else 0.0)) / score_scale, 4
                ),
                uncertainty=round(float(unc[i]), 4),
                coverage=round(float(cov[i]), 4),
                flagged=bool(flag[i]),
                distance=round(gap, 4),
                reasons=reasons,
            )
        )
        # The pick and its near-copies (cosine >= dedupe_threshold) leave the pool: consecutive
        # frames of a drive are almost identical, and labeling both wastes the budget.
        open_ &= (unit @ unit[i]) < dedupe_threshold
        open_[i] = False
        nearest = np.minimum(nearest, dist[:, i])
    return chosen


def random_for_review(n: int, budget: int, seed: int = 0) -> list[ReviewChoice]:
    """`budget` frames of `n` drawn uniformly (the baseline active selection must beat)."""
    if budget < 0:
        raise LamflowError(f"review budget must be >= 0, got {budget}")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(n, size=min(budget, n), replace=False).tolist()) if n else []
    return [
        ReviewChoice(
            index=int(i),
            rank=r,
            score=0.0,
            uncertainty=0.0,
            coverage=0.0,
            flagged=False,
            distance=0.0,
            reasons=["random (review.strategy: random)"],
        )
        for r, i in enumerate(picks, start=1)
    ]
