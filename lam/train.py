"""Training the annotator from a few seed frames: the one entry point (`train_head`).

Seed training fits the head on the seeds' views (`lam.head_fit`); with
`unlabeled_method: self_train` it then adapts to the drop's frames (`lam.adapt`). Both
build on `lam.head_fit`, and this module on both, so there is no import circle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from lam.adapt import adapt_to_frames
from lam.errors import LamflowError
from lam.head_fit import TrainReport, build_views, fit_head_on_views
from lam.modeling.lam import LabelAnythingModel
from lam.settings import UNLABELED_METHODS, AdaptSettings, TrainSettings

__all__ = ["TrainReport", "TrainSettings", "train_head"]


def train_head(
    model: LabelAnythingModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    ignore_index: int,
    settings: TrainSettings | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    pixel_weights: Sequence[np.ndarray | None] | None = None,
    unlabeled: Sequence[np.ndarray] | None = None,
) -> TrainReport:
    """Fit the model's head on seed frames (and, per `settings.unlabeled_method`, on the
    target drives' unlabelled frames).

    Args:
        model: built annotator; its backbone stays frozen.
        images: seed frames, each (H, W, 3) uint8 RGB.
        labels: matching (H, W) uint8 class ids; `ignore_index` marks unlabelled pixels.
        ignore_index: void id (excluded from the loss and the prototypes).
        settings: hyperparameters; deterministic for a given `settings.seed`.
        progress: called as progress(stage, total_stages, loss) for progress bars.
        pixel_weights: optional, per seed an (H, W) float map in [0, 1] or None: how much
            each labelled pixel counts in the adapter loss. Zero-shot seeds pass their
            confidence, so a pixel the backend was unsure of teaches less; weight 0 = unlabelled.
        unlabeled: frames (H, W, 3) uint8 of the drives the model will label; only their
            pixels exist here. Used by `settings.unlabeled_method` "self_train" (pseudo-labels
            of the seed-trained head on every one of them, refit, interpolation: lam.adapt);
            ignored by "none". The caller decides how many (tasks.train: unlabeled_frames).
    """
    settings = settings or TrainSettings()
    if settings.unlabeled_method not in UNLABELED_METHODS:
        raise LamflowError(
            f"unknown unlabeled_method {settings.unlabeled_method!r}; "
            f"known: {', '.join(UNLABELED_METHODS)}"
        )
    start = time.perf_counter()
    self_train = (
        unlabeled is not None and len(unlabeled) and settings.unlabeled_method == "self_train"
    )
    seed_progress = progress
    if progress is not None and self_train:  # one more stage after the seed fit's two
        outer = progress

        def seed_progress(stage: int, total: int, loss: float) -> None:
            outer(stage, total + 1, loss)

    views = build_views(model, images, labels, settings.scales, settings.hflip, pixel_weights)
    losses, counts = fit_head_on_views(model, views, ignore_index, settings, progress=seed_progress)
    if self_train and unlabeled is not None:
        adapted = adapt_to_frames(
            model,
            images,
            labels,
            unlabeled,
            ignore_index,
            AdaptSettings(max_frames=len(unlabeled), train=settings),
            seed_views=views,  # already extracted, with the seeds' per-pixel weights
        )
        losses += adapted.train.losses
        if progress is not None:
            progress(3, 3, losses[-1] if losses else float("nan"))
    return TrainReport(
        seconds=time.perf_counter() - start,
        views=len(views),
        final_loss=float(losses[-1]) if losses else float("nan"),
        class_pixels=counts,
        losses=losses,
    )
