"""Scoring predicted label maps against ground truth (mIoU, mF1, per-class IoU)."""

from __future__ import annotations

import logging
from typing import Any

from lam.errors import LamflowError
from lam.imageio import decode_label
from lam.metrics import ConfusionAccumulator
from lamflow.storage import join, list_dir, read_bytes
from tasks.frame_sources import load_classes
from tasks.label_folder import label_pngs

log = logging.getLogger(__name__)


def evaluate(
    pred: str, labels: str, classes: str, exclude: list[str] | None = None
) -> dict[str, Any]:
    """Score every predicted STEM.png that has a ground-truth STEM.png.

    Args:
        exclude: stems left out of the score (the seed frames: scoring them would flatter).
    Returns:
        {"miou", "mf1", "pixel_accuracy", "per_class": {name: {iou, f1}}, "n_images",
         "missing_labels"} with scores in percent.
    """
    class_list = load_classes(classes)
    pred_dir = label_pngs(pred)
    stems = [n[:-4] for n in list_dir(pred_dir) if n.endswith(".png")]
    stems = [s for s in stems if s not in set(exclude or [])]
    if not stems:
        raise LamflowError(f"no predicted label PNGs in {pred_dir}")
    gt_names = set(list_dir(labels))
    if not gt_names:
        raise LamflowError(f"no ground-truth labels in {labels}")
    acc = ConfusionAccumulator(class_list.num_classes, class_list.ignore_index, class_list.names)
    missing = []
    for stem in stems:
        if f"{stem}.png" not in gt_names:
            missing.append(stem)
            continue
        p = decode_label(read_bytes(join(pred_dir, f"{stem}.png")), stem)
        g = decode_label(read_bytes(join(labels, f"{stem}.png")), stem)
        if p.shape != g.shape:
            raise LamflowError(f"{stem}: prediction {p.shape} and label {g.shape} differ in size")
        acc.update(p, g)
    if acc.n_images == 0:
        raise LamflowError(f"none of the {len(stems)} predictions has a label in {labels}")
    if missing:
        log.warning("%d prediction(s) have no ground truth and were not scored", len(missing))
    return {**acc.scores().as_dict(), "n_images": acc.n_images, "missing_labels": len(missing)}
