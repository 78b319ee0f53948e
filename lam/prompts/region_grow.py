"""Offline prompt segmenter (no weights needed beyond the annotator's own backbone).

* Regions with a **box**: OpenCV GrabCut initialised with the box; positive clicks and
  scribbles are hard foreground, negative ones hard background.
* Regions with only **points / scribbles**: feature-affinity region growing on a grid of
  cells (stride `stride` pixels). A cell's feature is the frozen backbone's taps upsampled to
  the grid and L2-normalised, concatenated with its mean colour (CIE Lab); cell similarity to a
  region is the best cosine similarity to any of its seed cells. Regions of one frame compete:
  each cell goes to the most similar region, only if that similarity is >= `threshold` and
  above the region's negative seeds, and only if it is connected to one of that region's seeds.
  Cells far from every prompt stay void.
* A region's **mask** prompt is always kept as given.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lam.errors import LamflowError
from lam.prompts.schema import FramePrompts, RegionPrompt
from lam.prompts.segment import PromptSegmenter, _check_image, compose_regions, rasterize_scribbles


class RegionGrowSegmenter(PromptSegmenter):
    """GrabCut for boxes, backbone-feature affinity growing for clicks and scribbles."""

    name = "region_grow"

    def __init__(
        self,
        backbone: str | nn.Module | None = "efficientnet_lite0",
        stride: int = 4,
        threshold: float = 0.8,
        colour_weight: float = 0.5,
        grabcut_iterations: int = 3,
    ) -> None:
        if isinstance(backbone, str):
            from lam.build import build_backbone

            backbone = build_backbone(backbone)
        self.backbone = backbone.eval() if backbone is not None else None
        self.stride = int(stride)
        self.threshold = float(threshold)
        self.colour_weight = float(colour_weight)
        self.grabcut_iterations = int(grabcut_iterations)

    # -- features ---------------------------------------------------------------------------
    @torch.inference_mode()
    def cell_features(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, D) float32 unit-norm features, h = ceil(H / stride)."""
        import cv2

        h, w = -(-image.shape[0] // self.stride), -(-image.shape[1] // self.stride)
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
        lab_t = torch.from_numpy(lab).permute(2, 0, 1)[None]
        parts = [F.adaptive_avg_pool2d(lab_t - lab_t.mean(dim=(2, 3), keepdim=True), (h, w))]
        parts[0] = F.normalize(parts[0], dim=1) * self.colour_weight
        if self.backbone is not None:
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
            taps = self.backbone(x)
            for t in taps:
                up = F.interpolate(t.float(), size=(h, w), mode="bilinear", align_corners=False)
                parts.append(F.normalize(up, dim=1) / np.sqrt(len(taps)))
        feats = F.normalize(torch.cat(parts, dim=1), dim=1)[0]
        return feats.permute(1, 2, 0).numpy()

    # -- per-region pieces ------------------------------------------------------------------
    def _seed_mask(
        self, region: RegionPrompt, size_hw: tuple[int, int], negative: bool
    ) -> np.ndarray:
        pts = region.negative if negative else region.positive
        lines = list(region.negative_scribbles if negative else region.scribbles)
        lines += [p[None] for p in pts]
        return rasterize_scribbles(lines, size_hw, width=3)

    def grabcut(self, image: np.ndarray, region: RegionPrompt) -> np.ndarray:
        """GrabCut inside region.box (XYXY) with clicks as hard labels -> (H, W) bool.

        Runs on a crop around the box (box + 50% margin, at least 16 px) so small objects
        cost little; the margin gives GrabCut its background colour model.
        """
        import cv2

        h, w = image.shape[:2]
        if region.box is None:
            raise LamflowError(
                f"grabcut needs a box; region of class {region.class_name!r} has none"
            )
        x0, y0, x1, y1 = (int(round(v)) for v in region.box.tolist())
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        mx, my = max(16, (x1 - x0) // 2), max(16, (y1 - y0) // 2)
        cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
        pos = self._seed_mask(region, (h, w), negative=False)
        neg = self._seed_mask(region, (h, w), negative=True)
        mask = np.full((h, w), cv2.GC_BGD, dtype=np.uint8)
        mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
        mask[pos] = cv2.GC_FGD
        mask[neg] = cv2.GC_BGD
        crop = np.ascontiguousarray(mask[cy0:cy1, cx0:cx1])
        full_box = (x1 - x0) * (y1 - y0) >= 0.98 * (cx1 - cx0) * (cy1 - cy0)
        if (x1 - x0) < 3 or (y1 - y0) < 3 or full_box:
            # Too small to model, or no background left around the box: keep the box.
            return (mask == cv2.GC_PR_FGD) | (mask == cv2.GC_FGD)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(  # type: ignore[call-overload]
                cv2.cvtColor(np.ascontiguousarray(image[cy0:cy1, cx0:cx1]), cv2.COLOR_RGB2BGR),
                crop,
                None,
                bgd,
                fgd,
                self.grabcut_iterations,
                cv2.GC_INIT_WITH_MASK,
            )
        except cv2.error:  # degenerate colour model (e.g. a flat box): keep the box
            return (mask == cv2.GC_PR_FGD) | (mask == cv2.GC_FGD)
        out = np.zeros((h, w), dtype=bool)
        out[cy0:cy1, cx0:cx1] = (crop == cv2.GC_FGD) | (crop == cv2.GC_PR_FGD)
        return out if out.any() else pos

    def segment_frame(
        self, image: np.ndarray, prompts: FramePrompts, ignore_index: int
    ) -> np.ndarray:
        import cv2

        _check_image(image, prompts)
        size = prompts.size_hw
        masks: list[tuple[RegionPrompt, np.ndarray]] = []
        grow = []
        for region in prompts.regions:
            if region.box is not None:
                masks.append((region, self.grabcut(image, region)))
            elif len(region.positive) or region.scribbles:
                grow.append(region)
            if region.mask is not None:
                masks.append((region, region.mask))
        if grow:
            feats = self.cell_features(image)
            gh, gw, d = feats.shape
            flat = feats.reshape(-1, d)
            s = self.stride
            sims, negs, seeds = [], [], []
            for region in grow:
                pos = _to_cells(self._seed_mask(region, size, False), s, (gh, gw))
                pos = _at_least_one(pos, region.positive, s, (gh, gw))
                neg = _to_cells(self._seed_mask(region, size, True), s, (gh, gw))
                sims.append((flat @ flat[pos.reshape(-1)].T).max(axis=1))
                negs.append(
                    (flat @ flat[neg.reshape(-1)].T).max(axis=1)
                    if neg.any()
                    else np.full(len(flat), -np.inf)
                )
                seeds.append(pos)
            sim = np.stack(sims)  # (R, cells)
            best = np.argmax(sim, axis=0)
            best_sim = sim[best, np.arange(sim.shape[1])]
            best_neg = np.stack(negs)[best, np.arange(sim.shape[1])]
            accept = (best_sim >= self.threshold) & (best_sim > best_neg)
            for r, region in enumerate(grow):
                cells = (accept & (best == r)).reshape(gh, gw) | seeds[r]
                n, comp = cv2.connectedComponents(cells.astype(np.uint8), connectivity=8)
                keep = np.unique(comp[seeds[r]])
                cells = np.isin(comp, keep[keep > 0])
                full = cv2.resize(
                    cells.astype(np.uint8), (gw * s, gh * s), interpolation=cv2.INTER_NEAREST
                )[: size[0], : size[1]].astype(bool)
                masks.append((region, full | self._seed_mask(region, size, False)))
        return compose_regions(masks, size, ignore_index)


def _at_least_one(
    cells: np.ndarray, points: np.ndarray, stride: int, grid_hw: tuple[int, int]
) -> np.ndarray:
    """Make sure every click marks its own cell even when subsampling missed it."""
    cells = cells.copy()
    for x, y in points.tolist():
        cells[min(int(y) // stride, grid_hw[0] - 1), min(int(x) // stride, grid_hw[1] - 1)] = True
    return cells


def _to_cells(mask: np.ndarray, stride: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (h, w) bool: a cell is set if any of its stride x stride pixels is."""
    gh, gw = grid_hw
    padded = np.zeros((gh * stride, gw * stride), dtype=bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return np.asarray(padded.reshape(gh, stride, gw, stride).any(axis=(1, 3)), dtype=bool)
