"""Builders for review tests and the benchmark: a tiny class list, results a reviewer would draw."""

from __future__ import annotations

from typing import Any

import numpy as np

from lam.classes import ClassList
from lam.formats.labelstudio import mask_to_brush_rle
from lamflow.labelstudio_api import LabelStudioClient

CLASSES = ClassList(
    names=("sky", "road", "car"),
    colors=((128, 128, 128), (128, 64, 128), (64, 0, 128)),
    ignore_index=255,
)


def brush_result(mask: np.ndarray, name: str, from_name: str = "tag") -> dict[str, Any]:
    """A `brushlabels` result as the editor saves a stroke: (H, W) bool mask of class `name`."""
    h, w = mask.shape
    return {
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [name]},
    }


def keypoint_result(
    x: float, y: float, name: str, height: int, width: int, from_name: str = "point"
) -> dict[str, Any]:
    """A `keypointlabels` click at pixel (x, y) of an (height, width) frame, as the editor saves
    it: the pixel's centre in percent of the width / height."""
    return {
        "type": "keypointlabels",
        "from_name": from_name,
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": (x + 0.5) * 100.0 / width,
            "y": (y + 0.5) * 100.0 / height,
            "width": 0.5,
            "keypointlabels": [name],
        },
    }


def reviewer_annotate(
    client: LabelStudioClient, task_id: int, result: list[dict[str, Any]], cancelled: bool = False
) -> int:
    """Submit `result` on a task (or skip it, `cancelled=True`) as a reviewer would; returns the
    annotation id.

    The editor also sends lead_time, started_at and parent_prediction; Label Studio 1.23 needs
    none of them, so this is exactly the client call the benchmark's simulated reviewer makes.
    """
    return client.create_annotation(task_id, result, cancelled=cancelled)
