"""What a zero-shot seed backend returns for one frame, and the rules that make it a label.

Every backend ends in the same two steps, kept here so they are written once:
* `paint_masks`: scored masks -> one class per pixel, the highest score winning where masks
  overlap (the LLM-refinement paper resolves overlapping detections by score);
* `probabilities_to_label`: per-pixel class probabilities -> ids, void where the best class
  is below a confidence floor (a seed label must say "unsure" rather than guess: `train`
  skips void pixels and weights the rest by confidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class SeedLabel:
    """One frame's zero-shot seed label.

    label: (H, W) uint8 class ids, `ignore_index` where the backend is unsure or found nothing.
    confidence: (H, W) float32 in [0, 1], 0 on void pixels.
    details: JSON-able facts for the stage's record (detections, present classes, names used).
    """

    label: np.ndarray
    confidence: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)

    def labelled_fraction(self, ignore_index: int) -> float:
        return float(np.mean(self.label != ignore_index))

    def mean_confidence(self, ignore_index: int) -> float:
        """Mean confidence over labelled pixels (0.0 when none is labelled)."""
        keep = self.label != ignore_index
        return float(self.confidence[keep].mean()) if keep.any() else 0.0


class ZeroShotSeeder(Protocol):
    """A backend: frame -> seed label. `version` names model(s) + settings for provenance."""

    version: str

    def label_frame(self, image: np.ndarray) -> SeedLabel:
        """(H, W, 3) uint8 RGB -> its seed label."""
        ...


@dataclass
class ScoredMask:
    """A mask proposed for one class: mask (H, W) bool, its class id and score in [0, 1]."""

    mask: np.ndarray
    class_id: int
    score: float


def paint_masks(
    masks: Sequence[ScoredMask], shape: tuple[int, int], ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scored masks -> ((H, W) uint8 ids, (H, W) float32 confidence).

    Masks are painted in ascending score, so where two overlap the higher score wins
    (ties: the later mask in `masks`). Pixels no mask covers are void with confidence 0.
    """
    label = np.full(shape, ignore_index, dtype=np.uint8)
    confidence = np.zeros(shape, dtype=np.float32)
    order = sorted(range(len(masks)), key=lambda i: (masks[i].score, i))
    for i in order:
        m = masks[i]
        if m.mask.shape != tuple(shape):
            raise ValueError(f"mask {i} is {m.mask.shape}, frame is {tuple(shape)}")
        label[m.mask] = m.class_id
        confidence[m.mask] = float(m.score)
    return label, confidence


def probabilities_to_label(
    probs: np.ndarray, class_ids: Sequence[int], ignore_index: int, min_confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """(K, H, W) probabilities over K classes -> ((H, W) uint8 ids, (H, W) float32 confidence).

    class_ids[k] is the id of row k. Pixels whose best probability is below `min_confidence`
    become void with confidence 0.
    """
    if probs.ndim != 3 or probs.shape[0] != len(class_ids):
        raise ValueError(f"probs {probs.shape} do not match {len(class_ids)} class ids")
    best = probs.argmax(0)
    confidence = probs.max(0).astype(np.float32)
    label = np.asarray(class_ids, dtype=np.uint8)[best]
    unsure = confidence < min_confidence
    label[unsure] = ignore_index
    confidence[unsure] = 0.0
    return label, confidence
