"""Segmentation metrics with an ignore index: confusion matrix, IoU, F1.

Scores are computed from one confusion matrix accumulated over all frames (the standard
"dataset mIoU"), not averaged per frame, so small frames do not dominate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lam.errors import LamflowError


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Count (target, prediction) pairs.

    Args:
        pred: (H, W) integer class ids predicted.
        target: (H, W) integer ground-truth class ids; pixels equal to `ignore_index` are skipped.
        num_classes: C; ids must be in [0, C) apart from the ignore index.
        ignore_index: id excluded from scoring (CamVid's void = 11), or None.

    Returns:
        (C, C) int64 matrix, rows = ground truth, columns = prediction.
    """
    if pred.shape != target.shape:
        raise LamflowError(f"prediction shape {pred.shape} differs from label shape {target.shape}")
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = np.ones_like(t, dtype=bool) if ignore_index is None else t != ignore_index
    t, p = t[keep], p[keep]
    bad_t = (t < 0) | (t >= num_classes)
    if bad_t.any():
        raise LamflowError(
            f"label id {int(t[bad_t][0])} outside 0..{num_classes - 1} (ignore={ignore_index})"
        )
    bad_p = (p < 0) | (p >= num_classes)
    if bad_p.any():
        raise LamflowError(f"predicted id {int(p[bad_p][0])} outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


@dataclass
class SegmentationScores:
    """Scores derived from a confusion matrix. Classes absent from both ground truth and
    prediction are NaN and left out of the means (they carry no evidence either way)."""

    iou: np.ndarray  # (C,) float, NaN where undefined
    f1: np.ndarray  # (C,)
    confusion: np.ndarray  # (C, C)
    names: list[str] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return float(np.nanmean(self.iou)) if np.isfinite(self.iou).any() else float("nan")

    @property
    def mf1(self) -> float:
        return float(np.nanmean(self.f1)) if np.isfinite(self.f1).any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    def as_dict(self) -> dict:
        """JSON-ready scores in percent, rounded to 0.01."""
        names = self.names or [str(i) for i in range(len(self.iou))]

        def pct(x: float) -> float | None:
            return None if not np.isfinite(x) else round(100.0 * float(x), 2)

        return {
            "miou": pct(self.miou),
            "mf1": pct(self.mf1),
            "pixel_accuracy": pct(self.pixel_accuracy),
            "per_class": {
                n: {"iou": pct(i), "f1": pct(f)} for n, i, f in zip(names, self.iou, self.f1)
            },
        }


def scores_from_confusion(
    confusion: np.ndarray, names: list[str] | None = None
) -> SegmentationScores:
    """IoU = TP / (TP + FP + FN); F1 = 2TP / (2TP + FP + FN), per class."""
    cm = confusion.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = tp + fp + fn
        iou = np.where(denom > 0, tp / denom, np.nan)
        f1 = np.where(denom > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return SegmentationScores(iou=iou, f1=f1, confusion=confusion, names=list(names or []))


class ConfusionAccumulator:
    """Accumulates a confusion matrix over frames; `scores()` gives the dataset metrics."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, names=None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.names = list(names or [])
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.n_images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.n_images += 1

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.matrix, self.names)
