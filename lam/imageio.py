"""Decode and encode frames and label maps from/to bytes (no file system access here).

Keeping this byte-based lets `tasks/` fetch bytes through any fsspec URL (file, s3, memory)
while `lam/` stays free of storage code.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # ISA-L's deflate: zlib-format streams ~4x faster than zlib's level 1, and smaller.
    from isal import isal_zlib as _deflate

    _MAX_LEVEL = 3  # ISA-L's levels are 0-3
except ImportError:  # pragma: no cover - isal is pinned; plain zlib still writes valid PNGs
    _deflate = zlib  # type: ignore[assignment,misc]
    _MAX_LEVEL = 9

from lam.errors import LamflowError

# Re-exported: callers that also decode import it from here.
from lam.image_files import IMAGE_SUFFIXES as IMAGE_SUFFIXES


def decode_image(data: bytes, name: str = "frame") -> np.ndarray:
    """Bytes of a JPEG/PNG/... -> (H, W, 3) uint8 RGB in [0, 255].

    Decodes fully (not lazily) so truncated files fail here, with the frame's name, rather
    than later inside the model. PIL reads the header first (size, mode, and its check
    against decompression bombs); a colour JPEG of a sane size is then decoded by
    `_decode_colour_jpeg`, anything else, or anything that decoder fails on, by PIL, which
    also decides what cannot be decoded.
    """
    if not data:
        raise LamflowError(f"{name}: file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if _fast_jpeg_applies(img):
                decoded = _decode_colour_jpeg(data)
                if decoded is not None and decoded.shape[:2] == (img.height, img.width):
                    return decoded
            return rgb_array(img)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise LamflowError(f"{name}: cannot decode image ({exc})") from exc


def rgb_array(img: Image.Image) -> np.ndarray:
    """An opened PIL image, any mode -> (H, W, 3) uint8 RGB: how `decode_image` turns what PIL
    decoded into a frame, for callers handed a PIL image rather than bytes (the CVAT function).

    Loads the image fully; raises what PIL raises on a truncated file (decode_image wraps it).
    """
    img.load()
    # convert() copies even an RGB image; skipping it saves ~8% of a JPEG's decode.
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _fast_jpeg_applies(img: Image.Image) -> bool:
    """A 3-channel JPEG (PIL's mode "RGB") within PIL's pixel limit: the frames annotate reads.

    Greyscale and CMYK JPEGs keep PIL's conversion to RGB; a frame over the limit goes to PIL,
    which warns or refuses as it always did, instead of a multi-GB allocation.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return (
        img.format == "JPEG"
        and img.mode == "RGB"
        and (limit is None or img.width * img.height <= limit)
    )


# torchvision 0.29 marks its image decoders deprecated (a DeprecationWarning per call); they
# are its only JPEG decoder, and a fallback covers their removal.
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def _decode_colour_jpeg(data: bytes) -> np.ndarray | None:
    """A 3-channel JPEG's (H, W, 3) uint8 RGB through torchvision, or None to use PIL.

    Why: it is the same libjpeg-turbo decode as PIL's (same IDCT and chroma upsampling: the
    pixels of all 468 CamVid frames are identical) at ~0.74 ms a 360x480 frame against
    ~1.0 ms, a quarter of the decode that annotate runs beside the model on the same cores.
    Like PIL's it releases the GIL. Any failure returns None and PIL decodes the bytes: a JPEG
    cut before its end marker (torchvision raises), torchvision gone or changed (an import
    error, its deprecation warning turned into an error). Like PIL, it fills a JPEG whose data
    is cut short but whose end marker survives with grey. torch is imported here, not at
    module import: parsing params and `lamflow --help` must not load it.
    """
    decoder = _torchvision_jpeg_decoder()
    if decoder is None:
        return None
    try:
        chw = decoder(data)
    except Exception:  # noqa: BLE001 - whatever it is, PIL decodes these bytes or says why not
        return None
    if chw.ndim != 3 or chw.shape[0] != 3 or str(chw.dtype) != "torch.uint8":
        return None
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


@functools.cache
def _torchvision_jpeg_decoder() -> Callable[[bytes], Any] | None:
    """bytes -> (C, H, W) uint8 tensor, torchvision's decoder; None without torchvision.

    Imported once, with its deprecation warning silenced once (a filter added per call would
    reset every warning registry of the process each time).
    """
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # pragma: no cover - torchvision is pinned; PIL decodes the same
        return None
    warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)

    def decode(data: bytes) -> Any:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(raw, mode=ImageReadMode.UNCHANGED)

    return decode


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
    """(H, W) uint8 or (H, W, 3) uint8 -> PNG bytes (lossless, so ids survive).

    Single-channel maps (labels, confidences: two per labeled frame) go through
    `encode_gray_png`, about 3x faster than PIL's encoder; colour images through PIL.
    """
    if array.dtype != np.uint8:
        raise LamflowError(f"PNG encoding needs uint8, got {array.dtype}")
    if array.ndim == 2:
        return encode_gray_png(array)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_gray_png(array: np.ndarray, level: int = 1) -> bytes:
    """(H, W) uint8 -> an 8-bit greyscale PNG, every row with the PNG "Up" filter.

    `level` is the deflate level (capped at ISA-L's highest, 3, when it is used).

    Why not PIL: its encoder tries filters row by row, which costs most of the encode time on
    a smooth confidence map (6-7 ms for 360x480 against 3 ms here), and annotate writes two
    such maps per frame on the cores the model runs on. "Up" (row minus the row above, one
    vectorised subtraction) turns label maps into long runs of zeros and confidence maps into
    small residuals; files come out as small as PIL's. Deflate is ISA-L's when `isal` is
    installed (0.7 ms instead of 2.7 ms for a confidence map, the bulk of annotate's work off
    the model's cores); both release the GIL while compressing.
    """
    if array.ndim != 2 or array.dtype != np.uint8:
        raise LamflowError(f"greyscale PNG needs (H, W) uint8, got {array.shape} {array.dtype}")
    h, w = array.shape
    if h == 0 or w == 0:
        raise LamflowError(f"cannot encode an empty {h}x{w} image as PNG")
    rows = np.empty((h, w + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type "Up"
    rows[0, 1:] = array[0]  # the row above the first is zeros
    np.subtract(array[1:], array[:-1], out=rows[1:, 1:])  # wraps modulo 256, as PNG expects
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, greyscale, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", _deflate.compress(rows.tobytes(), min(level, _MAX_LEVEL)))
        + _png_chunk(b"IEND", b"")
    )


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
