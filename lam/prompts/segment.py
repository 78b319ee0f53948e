"""The segmenter interface and the rule that turns per-region masks into one class map."""

from __future__ import annotations

import numpy as np

from lam.errors import LamflowError
from lam.prompts.schema import FramePrompts, RegionPrompt


def rasterize_scribbles(
    lines: list[np.ndarray], size_hw: tuple[int, int], width: int = 1
) -> np.ndarray:
    """Polylines (each (K, 2) XY in pixels) -> (H, W) bool, `width` pixels thick."""
    import cv2

    out = np.zeros(size_hw, dtype=np.uint8)
    for line in lines:
        pts = np.round(line).astype(np.int32).reshape(-1, 1, 2)
        pts[..., 0] = np.clip(pts[..., 0], 0, size_hw[1] - 1)
        pts[..., 1] = np.clip(pts[..., 1], 0, size_hw[0] - 1)
        if len(pts) == 1:
            cv2.circle(out, tuple(int(v) for v in pts[0, 0]), max(0, width // 2), 1, -1)
        else:
            cv2.polylines(out, [pts], False, 1, max(1, width))
    return out.astype(bool)


def compose_regions(
    masks: list[tuple[RegionPrompt, np.ndarray]], size_hw: tuple[int, int], ignore_index: int
) -> np.ndarray:
    """Per-region (H, W) bool masks -> (H, W) uint8 class map; pixels in no mask stay void.

    Larger regions are painted first and smaller ones over them, so an object inside a
    larger region (a car on the road) keeps its pixels where the two masks overlap.
    """
    label = np.full(size_hw, ignore_index, dtype=np.uint8)
    for region, mask in sorted(masks, key=lambda rm: -int(rm[1].sum())):
        if mask.shape != tuple(size_hw):
            raise LamflowError(
                f"segmenter returned a {mask.shape} mask for class {region.class_name!r}, "
                f"expected {tuple(size_hw)}"
            )
        label[mask] = region.class_id
    return label


class PromptSegmenter:
    """Base class of prompt segmenter backends.

    Subclasses implement `segment_region` (one region's prompts -> its mask) or override
    `segment_frame` when all regions of a frame are solved jointly.
    """

    name = "base"

    def segment_region(self, image: np.ndarray, region: RegionPrompt) -> np.ndarray:
        """(H, W, 3) uint8 RGB + one region's prompts -> (H, W) bool mask."""
        raise NotImplementedError

    def segment_frame(
        self, image: np.ndarray, prompts: FramePrompts, ignore_index: int
    ) -> np.ndarray:
        """(H, W, 3) uint8 RGB + the frame's prompts -> (H, W) uint8 class map (void elsewhere)."""
        _check_image(image, prompts)
        self.prepare(image)
        masks = []
        for region in prompts.regions:
            mask = self.segment_region(image, region)
            if region.mask is not None:
                mask = mask | region.mask
            masks.append((region, mask))
        return compose_regions(masks, prompts.size_hw, ignore_index)

    def prepare(self, image: np.ndarray) -> None:
        """Per-frame work shared by all regions (e.g. SAM's image embedding); default none."""


def _check_image(image: np.ndarray, prompts: FramePrompts) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise LamflowError(f"frame {prompts.frame!r}: expected (H, W, 3) uint8, got {image.shape}")
    if image.shape[:2] != tuple(prompts.size_hw):
        raise LamflowError(
            f"frame {prompts.frame!r}: prompts were drawn on {prompts.size_hw} (H, W), "
            f"the frame is {image.shape[:2]}"
        )
