"""Frame embeddings for seed selection: pooled multi-scale backbone features.

Each tap of the frozen backbone is average-pooled over space and L2-normalised, then the taps
are concatenated (each weighted equally) and normalised again. Early taps carry layout and
colour, late taps carry semantics, so near-duplicate frames score a cosine similarity near 1
and frames of different scenes score lower.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lam.errors import LamflowError


def _resize_short_side(images: torch.Tensor, short_side: int) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, h, w) float32 with min(h, w) == short_side (no-op if 0)."""
    if short_side <= 0:
        return images.float()
    h, w = images.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(8, round(h * scale)), max(8, round(w * scale)))
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def embed_frames(
    backbone: nn.Module,
    images: Sequence[np.ndarray],
    short_side: int = 224,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed frames with a frozen backbone.

    Args:
        backbone: a `lam.modeling.backbone.Backbone` (takes (B, 3, H, W) uint8-range input,
            returns a list of (B, C_i, h_i, w_i) taps).
        images: frames, each (H, W, 3) uint8 RGB; sizes may differ.
        short_side: frames are resized so their short side has this many pixels (0 = as is);
            pooled features barely change with size, and small inputs are much faster.
        progress: called with 1 after each frame (for progress bars).
    Returns:
        (N, D) float32, each row L2-normalised, D = sum of the taps' channels.
    """
    backbone = backbone.eval()
    rows = []
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise LamflowError(
                f"frame {i}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}"
            )
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        taps = backbone(_resize_short_side(x, short_side))
        pooled = [F.normalize(t.float().mean(dim=(2, 3)), dim=1) for t in taps]
        rows.append(F.normalize(torch.cat(pooled, dim=1), dim=1)[0].cpu().numpy())
        if progress is not None:
            progress(1)
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(rows).astype(np.float32)
