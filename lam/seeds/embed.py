"""Frame embeddings for seed selection: pooled multi-scale backbone features.

Each tap of the frozen backbone is average-pooled over space and L2-normalised, then the taps
are concatenated (each weighted equally) and normalised again. Early taps carry layout and
colour, late taps carry semantics, so near-duplicate frames score a cosine similarity near 1
and frames of different scenes score lower.

`embed_frames_and_patches` also keeps a coarse grid of *patch* embeddings per frame, from the
backbone's last (semantic) taps only: a frame is a good single seed when its patches resemble
most of the patches of the frames to label (see `lam.seeds.select.patch_coverage`). The early
taps (strides 4 and 8) describe colour and texture, which the classes do not differ by.
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


def _check_frame(i: int, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise LamflowError(f"frame {i}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")


@torch.inference_mode()
def embed_frames_and_patches(
    backbone: nn.Module,
    images: Sequence[np.ndarray],
    short_side: int = 224,
    grid: tuple[int, int] = (6, 8),
    patch_taps: int = 3,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame and patch embeddings from one backbone pass per frame.

    Args:
        backbone: a `lam.modeling.backbone.Backbone` (takes (B, 3, H, W) uint8-range input,
            returns a list of (B, C_i, h_i, w_i) taps).
        images: frames, each (H, W, 3) uint8 RGB; sizes may differ.
        short_side: frames are resized so their short side has this many pixels (0 = as is);
            pooled features barely change with size, and small inputs are much faster.
        grid: (rows, cols) of the patch grid; each tap is average-pooled to it.
        patch_taps: the patches use the last this many taps (all if the backbone has fewer).
        progress: called with 1 after each frame (for progress bars).
    Returns:
        frames (N, D) float32, D = sum of all taps' channels, and patches (N, rows * cols, P)
        float32, P = sum of the last `patch_taps` taps' channels, patches in row-major grid
        order. Every row (frame or patch) is L2-normalised, each tap weighted equally.
    """
    if len(grid) != 2 or min(grid) < 1:
        raise LamflowError(f"patch grid must be two positive ints (rows, cols), got {grid}")
    if patch_taps < 1:
        raise LamflowError(f"patch_taps must be >= 1, got {patch_taps}")
    backbone = backbone.eval()
    frames, patches = [], []
    for i, image in enumerate(images):
        _check_frame(i, image)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        taps = [t.float() for t in backbone(_resize_short_side(x, short_side))]
        pooled = [F.normalize(t.mean(dim=(2, 3)), dim=1) for t in taps]
        frames.append(F.normalize(torch.cat(pooled, dim=1), dim=1)[0].cpu().numpy())
        size = (int(grid[0]), int(grid[1]))
        cells = [F.normalize(F.adaptive_avg_pool2d(t, size), dim=1) for t in taps]
        cell = F.normalize(torch.cat(cells[-patch_taps:], dim=1), dim=1)[0]  # (P, rows, cols)
        patches.append(cell.flatten(1).T.cpu().numpy())
        if progress is not None:
            progress(1)
    if not frames:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0, 0), dtype=np.float32)
    return np.stack(frames).astype(np.float32), np.stack(patches).astype(np.float32)


def embed_frames(
    backbone: nn.Module,
    images: Sequence[np.ndarray],
    short_side: int = 224,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Frame embeddings only: (N, D) float32 as in `embed_frames_and_patches`."""
    return embed_frames_and_patches(backbone, images, short_side, progress=progress)[0]
