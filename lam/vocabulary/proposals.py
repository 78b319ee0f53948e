"""What every label-proposal backend returns, and the image views they look at.

A backend sees one frame and proposes labels, each with one probability per view (full
frame, grid crops) or per sampled answer; the filtering step (lam.vocabulary.filtering)
combines those. Views follow the LLM2Labels variants: the full frame ("full"), a 2x2 grid of
crops ("grid"), or both ("both"), because small objects only win the classifier's vote in a
crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

VIEWS = ("full", "grid", "both")


@dataclass
class FrameProposals:
    """Labels proposed for one frame.

    `labels` maps a label name to its probabilities in [0, 1], one per view or sample in
    which it was proposed; `wnids` maps the labels that have one to their WordNet noun id.
    """

    labels: dict[str, list[float]] = field(default_factory=dict)
    wnids: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, prob: float, wnid: str | None = None) -> None:
        """Record one probability for `label` (clipped into [0, 1] against rounding)."""
        self.labels.setdefault(label, []).append(float(min(1.0, max(0.0, prob))))
        if wnid:
            self.wnids.setdefault(label, wnid)


class Tagger(Protocol):
    """A label-proposal backend. `version` identifies model + settings for provenance."""

    version: str

    def propose(self, image: np.ndarray) -> FrameProposals:
        """(H, W, 3) uint8 RGB frame -> its proposed labels."""
        ...


def frame_views(image: np.ndarray, views: str) -> list[np.ndarray]:
    """The crops a backend scores for `views` in VIEWS.

    Args:
        image: (H, W, 3) uint8 RGB.
        views: 'full' -> [image]; 'grid' -> its four quadrants (top-left, top-right,
            bottom-left, bottom-right); 'both' -> full frame then the four quadrants.
    Returns:
        list of (h, w, 3) uint8 arrays (views of `image`, not copies).
    """
    if views not in VIEWS:
        raise ValueError(f"unknown views {views!r}; known: {', '.join(VIEWS)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) RGB, got shape {image.shape}")
    out = [image] if views in ("full", "both") else []
    if views in ("grid", "both"):
        h, w = image.shape[:2]
        hh, hw = max(1, h // 2), max(1, w // 2)
        out += [image[:hh, :hw], image[:hh, hw:], image[hh:, :hw], image[hh:, hw:]]
    return out
