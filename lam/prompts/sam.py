"""Segment Anything backend: one SAM call per region with its box and points (XY, pixels).

As in box+point prompting of SAM for label refinement, each region's box and its positive and
negative clicks go into one prompt; scribbles contribute up to `scribble_points` points each,
spread evenly along the line. A region given only as a mask keeps that mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.prompts.schema import RegionPrompt
from lam.prompts.segment import PromptSegmenter


def _spread(line: np.ndarray, n: int) -> np.ndarray:
    """(K, 2) polyline -> (min(n, K'), 2) points spread evenly along its length."""
    if len(line) == 1:
        return line
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] == 0:
        return line[:1]
    at = np.linspace(0, cum[-1], n)
    return np.stack([np.interp(at, cum, line[:, 0]), np.interp(at, cum, line[:, 1])], axis=1)


class SamSegmenter(PromptSegmenter):
    """`segment_anything.SamPredictor` around a checkpoint (or an already built `Sam`)."""

    name = "sam"

    def __init__(
        self,
        checkpoint: str | None = None,
        model_type: str = "vit_b",
        device: str = "cpu",
        model: Any = None,
        scribble_points: int = 5,
    ) -> None:
        from segment_anything import SamPredictor, sam_model_registry

        if model is None:
            if not checkpoint:
                raise LamflowError(
                    "prompt segmenter 'sam' needs a checkpoint: set seed_masks.sam_checkpoint "
                    "to a local SAM .pth file, or use segmenter 'region_grow' (no weights)"
                )
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
            if model_type not in sam_model_registry:
                raise LamflowError(
                    f"unknown SAM model_type {model_type!r}; known: {sorted(sam_model_registry)}"
                )
            model = sam_model_registry[model_type](checkpoint=checkpoint)
        self.predictor = SamPredictor(model.to(device).eval())
        self.scribble_points = int(scribble_points)

    def prepare(self, image: np.ndarray) -> None:
        self.predictor.set_image(image, image_format="RGB")

    def region_prompt(self, region: RegionPrompt) -> dict[str, Any]:
        """SamPredictor.predict keyword arguments for one region (points XY, box XYXY)."""
        pos = [region.positive] + [_spread(s, self.scribble_points) for s in region.scribbles]
        neg = [region.negative] + [
            _spread(s, self.scribble_points) for s in region.negative_scribbles
        ]
        pos_pts = np.concatenate(pos).reshape(-1, 2)
        neg_pts = np.concatenate(neg).reshape(-1, 2)
        kwargs: dict[str, Any] = {}
        if len(pos_pts) or len(neg_pts):
            kwargs["point_coords"] = np.concatenate([pos_pts, neg_pts]).astype(np.float32)
            kwargs["point_labels"] = np.concatenate(
                [np.ones(len(pos_pts)), np.zeros(len(neg_pts))]
            ).astype(np.int64)
        if region.box is not None:
            kwargs["box"] = region.box.astype(np.float32)
        # One click is ambiguous (part / object / stuff): ask for 3 masks and keep the best.
        kwargs["multimask_output"] = region.box is None and len(pos_pts) <= 1
        return kwargs

    def segment_region(self, image: np.ndarray, region: RegionPrompt) -> np.ndarray:
        kwargs = self.region_prompt(region)
        if "point_coords" not in kwargs and "box" not in kwargs:
            return np.zeros(image.shape[:2], dtype=bool)  # mask-only region
        masks, scores, _ = self.predictor.predict(**kwargs)
        return np.asarray(masks[int(np.argmax(scores))], dtype=bool)
