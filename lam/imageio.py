"""Decode and encode frames and label maps from/to bytes (no file system access here).

Keeping this byte-based lets `tasks/` fetch bytes through any fsspec URL (file, s3, memory)
while `lam/` stays free of storage code.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from lam.errors import LamflowError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def decode_image(data: bytes, name: str = "frame") -> np.ndarray:
    """Bytes of a JPEG/PNG/... -> (H, W, 3) uint8 RGB in [0, 255].

    Decodes fully (not lazily) so truncated files fail here, with the frame's name, rather
    than later inside the model.
    """
    if not data:
        raise LamflowError(f"{name}: file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise LamflowError(f"{name}: cannot decode image ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8)


def decode_label(data: bytes, name: str = "label") -> np.ndarray:
    """Bytes of a single-channel PNG of class ids -> (H, W) uint8.

    Palette ('P') PNGs are read as their indices; RGB label images are refused because their
    colours would silently be read as ids.
    """
    if not data:
        raise LamflowError(f"{name}: file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                raise LamflowError(
                    f"{name}: label must be a single-channel PNG of class ids, got mode {img.mode}"
                )
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise LamflowError(f"{name}: cannot decode label ({exc})") from exc
    if arr.max(initial=0) > 255:
        raise LamflowError(f"{name}: label ids above 255 are not supported")
    return arr.astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) uint8 or (H, W, 3) uint8 -> PNG bytes (lossless, so ids survive)."""
    if array.dtype != np.uint8:
        raise LamflowError(f"PNG encoding needs uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (for overlays and previews only, never labels)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def overlay(
    image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend a class map over its frame for humans to look at.

    Args:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8 class ids.
        palette: (256, 3) uint8 id -> colour.
        alpha: weight of the label colours in [0, 1].
    Returns:
        (H, W, 3) uint8 RGB.
    """
    colours = palette[label].astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_label(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) id map to (h, w) so ids are never blended."""
    resized = Image.fromarray(label).resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(resized)
