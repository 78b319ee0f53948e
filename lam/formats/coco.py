"""COCO run-length encoding and COCO JSON export/import of class-id label maps.

COCO RLE (pycocotools `maskApi.c`): the mask is flattened column-major (Fortran order), runs
alternate 0s and 1s starting with a run of 0s (possibly empty); "compressed" counts are a string
in which each run, after the third, is stored as the difference to the run two before it, in
5-bit groups with a continuation bit, each offset by 48 into printable ASCII.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lam.classes import ClassList
from lam.errors import LamflowError


def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _counts_to_string(counts: Sequence[int]) -> str:
    out = []
    for i, cnt in enumerate(counts):
        x = int(cnt) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise LamflowError("RLE counts string ends inside a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise LamflowError(f"RLE counts string has an invalid character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """(H, W) bool -> {"size": [H, W], "counts": str (compressed) or list[int]}."""
    if mask.ndim != 2:
        raise LamflowError(f"RLE needs a 2-D mask, got shape {mask.shape}")
    runs = _runs(mask)
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": _counts_to_string(runs) if compressed else runs,
    }


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (string or list counts) -> (H, W) bool mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise LamflowError(f"RLE needs 'size': [H, W] and 'counts', got {rle!r:.80}") from exc
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise LamflowError(f"RLE runs sum to {sum(runs)}, expected H*W = {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((h, w), order="F")


def labels_to_coco(
    frames: Sequence[tuple[str, np.ndarray]],
    classes: ClassList,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Class-id maps -> a COCO dict with one RLE annotation per (frame, class present).

    Args:
        frames: (file_name, (H, W) uint8 class ids); void pixels (classes.ignore_index) are
            left out of every annotation.
        classes: category ids are class id + 1 (COCO reserves 0).
    Returns:
        {"info", "images", "categories", "annotations"}; bbox is [x, y, width, height].
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (file_name, label) in enumerate(frames, start=1):
        h, w = label.shape
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for cid in np.unique(label).tolist():
            if cid == classes.ignore_index:
                continue
            if cid >= classes.num_classes:
                raise LamflowError(
                    f"{file_name}: class id {cid} outside 0..{classes.num_classes - 1}"
                )
            mask = label == cid
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cid + 1,
                    "segmentation": encode_rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "", "color": list(classes.colors[i])}
        for i, name in enumerate(classes.names)
    ]
    return {
        "info": info or {"description": "lamflow labels"},
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }


def coco_to_labels(coco: dict[str, Any], classes: ClassList) -> dict[str, np.ndarray]:
    """A COCO dict with RLE or polygon-free segmentations -> {file_name: (H, W) uint8 ids}.

    Categories are matched by name; pixels in no annotation are void. Where annotations
    overlap, the later one wins.
    """
    by_cat = {}
    for cat in coco.get("categories", []):
        if cat["name"] not in classes.names:
            raise LamflowError(
                f"COCO category {cat['name']!r} is not a class: {list(classes.names)}"
            )
        by_cat[cat["id"]] = classes.names.index(cat["name"])
    out: dict[int, tuple[str, np.ndarray]] = {}
    for img in coco.get("images", []):
        lab = np.full((int(img["height"]), int(img["width"])), classes.ignore_index, np.uint8)
        out[img["id"]] = (img["file_name"], lab)
    for ann in coco.get("annotations", []):
        if ann["image_id"] not in out or ann["category_id"] not in by_cat:
            raise LamflowError(
                f"COCO annotation {ann.get('id')} refers to an unknown image or category"
            )
        seg = ann["segmentation"]
        if not isinstance(seg, dict):
            raise LamflowError(f"COCO annotation {ann.get('id')}: only RLE segmentations are read")
        name, lab = out[ann["image_id"]]
        mask = decode_rle(seg)
        if mask.shape != lab.shape:
            raise LamflowError(f"{name}: RLE size {mask.shape} differs from image {lab.shape}")
        lab[mask] = by_cat[ann["category_id"]]
    return {name: lab for name, lab in out.values()}
