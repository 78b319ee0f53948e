"""Label filtering: combine per-label probabilities, threshold them, rank the vocabulary.

Follows LLM2Labels (Eq. 3): a label seen several times (over sampled answers, image crops or
frames) has several probabilities; they are combined into one score by the average, the
product, the minimum or the maximum. A threshold then keeps labels whose score is above a
percentile of all scores, above a fixed probability, both, or keeps everything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

COMBINERS = ("avg", "product", "min", "max")
THRESHOLDS = ("percentile", "probability", "both", "none")


def combine(values: Sequence[float], how: str) -> float:
    """One score from probabilities `values` (each in [0, 1]) by `how` in COMBINERS.

    `product` multiplies in log space so a long list cannot underflow to an exact 0 before
    the end; an empty list is refused because it has no meaningful score.
    """
    if how not in COMBINERS:
        raise ValueError(f"unknown combiner {how!r}; known: {', '.join(COMBINERS)}")
    if len(values) == 0:
        raise ValueError("cannot combine an empty list of probabilities")
    arr = np.asarray(values, dtype=np.float64)
    if np.any(arr < 0) or np.any(arr > 1) or not np.all(np.isfinite(arr)):
        raise ValueError(f"probabilities must lie in [0, 1], got {list(values)}")
    if how == "avg":
        return float(arr.mean())
    if how == "min":
        return float(arr.min())
    if how == "max":
        return float(arr.max())
    if np.any(arr == 0):
        return 0.0
    return float(math.exp(np.log(arr).sum()))


def threshold_mask(
    scores: Sequence[float], mode: str, percentile: float = 0.68, probability: float = 0.68
) -> np.ndarray:
    """Boolean keep-mask over `scores` (shape (N,)).

    Args:
        scores: one score per label, in [0, 1].
        mode: 'percentile' keeps scores >= the `percentile` quantile of `scores` (linear
            interpolation, so 0.68 keeps roughly the top third); 'probability' keeps scores
            >= `probability`; 'both' needs both; 'none' keeps all.
        percentile: quantile in [0, 1] (0.68 as in LLM2Labels).
        probability: fixed probability in [0, 1] (0.68 as in LLM2Labels).
    """
    if mode not in THRESHOLDS:
        raise ValueError(f"unknown threshold mode {mode!r}; known: {', '.join(THRESHOLDS)}")
    for name, value in (("percentile", percentile), ("probability", probability)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold {name} must lie in [0, 1], got {value}")
    arr = np.asarray(scores, dtype=np.float64)
    keep = np.ones(arr.shape, dtype=bool)
    if arr.size == 0 or mode == "none":
        return keep
    if mode in ("percentile", "both"):
        keep &= arr >= np.quantile(arr, percentile)
    if mode in ("probability", "both"):
        keep &= arr >= probability
    return keep


@dataclass
class LabelEvidence:
    """Everything seen about one label over a dataset.

    `frame_scores` has one combined score per frame the label was proposed in (views and
    samples of a frame are combined first, then frames); `wnid` is a WordNet noun id
    ("n02958343") when the proposing backend knows it.
    """

    label: str
    frame_scores: list[float] = field(default_factory=list)
    wnid: str | None = None

    @property
    def occurrences(self) -> int:
        """Number of frames the label was proposed in."""
        return len(self.frame_scores)


@dataclass(frozen=True)
class RankedLabel:
    """One row of the dataset-level vocabulary, best first."""

    label: str
    score: float  # ranking score: probability, times frequency when frame-weighted
    probability: float  # the label's combined probability, the value thresholds act on
    occurrences: int
    frequency: float  # occurrences / frames seen, in [0, 1]
    wnid: str | None = None


def accumulate(
    evidence: dict[str, LabelEvidence],
    frame: Mapping[str, Sequence[float]],
    how: str,
    wnids: Mapping[str, str] | None = None,
) -> None:
    """Fold one frame's proposals (label -> probabilities over views/samples) into `evidence`."""
    for label, values in frame.items():
        if not values:
            continue
        item = evidence.setdefault(label, LabelEvidence(label))
        item.frame_scores.append(combine(values, how))
        if wnids and label in wnids and item.wnid is None:
            item.wnid = wnids[label]


def rank_labels(
    evidence: Iterable[LabelEvidence],
    n_frames: int,
    how: str = "avg",
    threshold: str = "percentile",
    percentile: float = 0.68,
    probability: float = 0.68,
    min_occurrences: int = 1,
    frame_weighting: bool = True,
) -> list[RankedLabel]:
    """Dataset-level vocabulary: combine each label's frame scores, filter, sort best first.

    Thresholds act on the combined probability, as in the paper. With `frame_weighting` the
    ranking score is that probability times the label's frame frequency, so a label proposed
    confidently once in a thousand frames does not outrank one seen in most frames (why: the
    vocabulary describes the fleet's data, not single frames). Ties are broken by label name
    so the order is deterministic.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    rows = []
    for item in evidence:
        if item.occurrences < min_occurrences:
            continue
        freq = min(1.0, item.occurrences / n_frames)
        prob = combine(item.frame_scores, how)
        score = prob * freq if frame_weighting else prob
        rows.append(RankedLabel(item.label, score, prob, item.occurrences, freq, item.wnid))
    keep = threshold_mask([r.probability for r in rows], threshold, percentile, probability)
    kept = [r for r, k in zip(rows, keep) if k]
    return sorted(kept, key=lambda r: (-r.score, r.label))
