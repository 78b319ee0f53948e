"""The prompt file: what a human clicked, boxed or scribbled on one seed frame.

One JSON file per seed frame (`STEM.json`); all coordinates are in pixels of the full-size
frame, x to the right and y down, origin at the top-left pixel's corner:

    {
      "version": 1,
      "frame": "0001TP_008190",            # optional; must match the file's stem if given
      "image_size": [480, 360],            # optional [width, height]; checked against the frame
      "regions": [                         # one entry per object / region of one class
        {
          "class": "car",                  # a name of the class list
          "positive": [[x, y], ...],       # points on the region (XY)
          "negative": [[x, y], ...],       # points that are NOT this region (XY)
          "box": [x0, y0, x1, y1],         # XYXY, x0 < x1, y0 < y1
          "scribbles": [[[x, y], ...], ...],           # polylines on the region
          "negative_scribbles": [[[x, y], ...], ...],  # polylines off the region
          "mask": {"size": [H, W], "counts": ...}      # COCO RLE (string or list counts)
        }
      ]
    }

Every region needs at least one of positive, box, scribbles, mask. Errors name the frame, the
region index, its class and the field, e.g. `frame 'f1', regions[2] (class 'car'): box: ...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lam.classes import ClassList
from lam.errors import LamflowError

SCHEMA_VERSION = 1
_FIELDS = {"class", "positive", "negative", "box", "scribbles", "negative_scribbles", "mask"}


@dataclass
class RegionPrompt:
    """Prompts for one region of one class. Points are (K, 2) float32 XY in pixels."""

    class_name: str
    class_id: int
    positive: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    negative: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    box: np.ndarray | None = None  # (4,) float32 XYXY in pixels
    scribbles: list[np.ndarray] = field(default_factory=list)  # each (K, 2) XY polyline
    negative_scribbles: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None  # (H, W) bool

    def to_json(self) -> dict[str, Any]:
        from lam.formats.coco import encode_rle

        out: dict[str, Any] = {"class": self.class_name}
        if len(self.positive):
            out["positive"] = self.positive.tolist()
        if len(self.negative):
            out["negative"] = self.negative.tolist()
        if self.box is not None:
            out["box"] = self.box.tolist()
        if self.scribbles:
            out["scribbles"] = [s.tolist() for s in self.scribbles]
        if self.negative_scribbles:
            out["negative_scribbles"] = [s.tolist() for s in self.negative_scribbles]
        if self.mask is not None:
            out["mask"] = encode_rle(self.mask)
        return out


@dataclass
class FramePrompts:
    """All prompts of one frame; `size_hw` is (H, W) of the frame they were drawn on."""

    frame: str
    size_hw: tuple[int, int]
    regions: list[RegionPrompt]

    def to_json(self) -> dict[str, Any]:
        h, w = self.size_hw
        return {
            "version": SCHEMA_VERSION,
            "frame": self.frame,
            "image_size": [w, h],
            "regions": [r.to_json() for r in self.regions],
        }


def _points(value: Any, where: str, size_hw: tuple[int, int]) -> np.ndarray:
    if not isinstance(value, list):
        raise LamflowError(f"{where}: expected a list of [x, y] points, got {value!r:.60}")
    try:
        pts = np.asarray(value, dtype=np.float32).reshape(-1, 2) if value else np.zeros((0, 2))
    except (TypeError, ValueError) as exc:
        raise LamflowError(f"{where}: expected a list of [x, y] points, got {value!r:.60}") from exc
    if len(value) and (pts.shape[0] != len(value) or not np.isfinite(pts).all()):
        raise LamflowError(f"{where}: every point must be [x, y] numbers, got {value!r:.60}")
    h, w = size_hw
    bad = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
    if bad.any():
        x, y = pts[int(np.argmax(bad))].tolist()
        raise LamflowError(f"{where}: point [{x:g}, {y:g}] lies outside the {w}x{h} frame")
    return pts.astype(np.float32)


def _polylines(value: Any, where: str, size_hw: tuple[int, int]) -> list[np.ndarray]:
    if not isinstance(value, list):
        raise LamflowError(f"{where}: expected a list of polylines, got {value!r:.60}")
    lines = [_points(line, f"{where}[{i}]", size_hw) for i, line in enumerate(value)]
    for i, line in enumerate(lines):
        if len(line) < 1:
            raise LamflowError(f"{where}[{i}]: a scribble needs at least one point")
    return lines


def _box(value: Any, where: str, size_hw: tuple[int, int]) -> np.ndarray:
    if not isinstance(value, list) or len(value) != 4:
        raise LamflowError(f"{where}: expected [x0, y0, x1, y1], got {value!r:.60}")
    try:
        box = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise LamflowError(f"{where}: expected 4 numbers, got {value!r:.60}") from exc
    x0, y0, x1, y1 = box.tolist()
    if not (x0 < x1 and y0 < y1):
        raise LamflowError(f"{where}: need x0 < x1 and y0 < y1 (XYXY), got {value}")
    h, w = size_hw
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise LamflowError(f"{where}: box {value} extends outside the {w}x{h} frame")
    return box


def _mask(value: Any, where: str, size_hw: tuple[int, int]) -> np.ndarray:
    from lam.formats.coco import decode_rle

    if not isinstance(value, dict) or "size" not in value or "counts" not in value:
        raise LamflowError(f"{where}: expected a COCO RLE {{'size': [H, W], 'counts': ...}}")
    if list(value["size"]) != list(size_hw):
        raise LamflowError(
            f"{where}: mask size {value['size']} differs from frame [H, W] {list(size_hw)}"
        )
    try:
        return decode_rle(value)
    except LamflowError as exc:
        raise LamflowError(f"{where}: {exc}") from exc


def parse_prompts(
    data: Any, classes: ClassList, frame: str, size_hw: tuple[int, int]
) -> FramePrompts:
    """Validate a prompt file's JSON for `frame` of (H, W) `size_hw` against `classes`.

    Raises LamflowError naming the frame, region index, class and field that is wrong.
    """
    if not isinstance(data, dict):
        raise LamflowError(f"frame {frame!r}: prompt file must be a JSON object")
    unknown = sorted(set(data) - {"version", "frame", "image_size", "regions"})
    if unknown:
        raise LamflowError(f"frame {frame!r}: unknown top-level field(s) {unknown}")
    if data.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise LamflowError(
            f"frame {frame!r}: version: expected {SCHEMA_VERSION}, got {data['version']!r}"
        )
    if "frame" in data and data["frame"] != frame:
        raise LamflowError(f"frame {frame!r}: frame: file says {data['frame']!r}")
    if "image_size" in data:
        h, w = size_hw
        if list(data["image_size"]) != [w, h]:
            raise LamflowError(
                f"frame {frame!r}: image_size: file says {data['image_size']} "
                f"[W, H], the frame is [{w}, {h}]"
            )
    regions_in = data.get("regions")
    if not isinstance(regions_in, list):
        raise LamflowError(f"frame {frame!r}: regions: expected a list, got {regions_in!r:.60}")
    regions = []
    for i, entry in enumerate(regions_in):
        if not isinstance(entry, dict):
            raise LamflowError(f"frame {frame!r}, regions[{i}]: expected an object")
        name = entry.get("class")
        where = f"frame {frame!r}, regions[{i}] (class {name!r})"
        if name not in classes.names:
            raise LamflowError(f"{where}: class: unknown class; known: {list(classes.names)}")
        extra = sorted(set(entry) - _FIELDS)
        if extra:
            raise LamflowError(f"{where}: unknown field(s) {extra}; known: {sorted(_FIELDS)}")
        region = RegionPrompt(class_name=name, class_id=classes.names.index(name))
        if "positive" in entry:
            region.positive = _points(entry["positive"], f"{where}: positive", size_hw)
        if "negative" in entry:
            region.negative = _points(entry["negative"], f"{where}: negative", size_hw)
        if entry.get("box") is not None:
            region.box = _box(entry["box"], f"{where}: box", size_hw)
        if "scribbles" in entry:
            region.scribbles = _polylines(entry["scribbles"], f"{where}: scribbles", size_hw)
        if "negative_scribbles" in entry:
            region.negative_scribbles = _polylines(
                entry["negative_scribbles"], f"{where}: negative_scribbles", size_hw
            )
        if entry.get("mask") is not None:
            region.mask = _mask(entry["mask"], f"{where}: mask", size_hw)
        if not (
            len(region.positive)
            or region.box is not None
            or region.scribbles
            or region.mask is not None
        ):
            raise LamflowError(f"{where}: needs at least one of positive, box, scribbles, mask")
        regions.append(region)
    return FramePrompts(frame=frame, size_hw=size_hw, regions=regions)


def load_prompts(
    data: bytes, classes: ClassList, frame: str, size_hw: tuple[int, int]
) -> FramePrompts:
    """Bytes of a prompt file -> FramePrompts (LamflowError if not JSON or invalid)."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LamflowError(f"frame {frame!r}: prompt file is not valid JSON: {exc}") from exc
    return parse_prompts(obj, classes, frame, size_hw)
