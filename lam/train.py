"""Training the annotator from a few seed frames: the one entry point (`train_head`).

Seed training fits the head on the seeds' views (`lam.head_fit`). With
`unlabeled_method: norm_stats` the backbone's BatchNorm statistics first move towards the
drop's frames (`lam.norm_stats`), so the seeds are seen as the drop will be; with
`self_train` the head then adapts to the drop's frames (`lam.adapt`). `lam.adapt` builds on
`lam.head_fit`, and this module on both, so there is no import circle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from lam.adapt import adapt_to_frames
from lam.errors import LamflowError
from lam.head_fit import TrainReport, build_views, fit_head_on_views
from lam.modeling.class_map import ClassMapAdapter
from lam.modeling.lam import LabelAnythingModel
from lam.norm_stats import adapt_norm_statistics
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
        images: seed frames, each (H, W, 3) uint8 RGB; none for a class map head's
            zero-seed model (its map as built, biases 0; "norm_stats" still applies).
        labels: matching (H, W) uint8 class ids; `ignore_index` marks unlabelled pixels.
        ignore_index: void id (excluded from the loss and the prototypes).
        settings: hyperparameters; deterministic for a given `settings.seed`.
        progress: called as progress(stage, total_stages, loss) for progress bars.
        pixel_weights: optional, per seed an (H, W) float map in [0, 1] or None: how much
            each labelled pixel counts in the adapter loss. Zero-shot seeds pass their
            confidence, so a pixel the backend was unsure of teaches less; weight 0 = unlabelled.
        unlabeled: frames (H, W, 3) uint8 of the drives the model will label; only their
            pixels exist here. Used by `settings.unlabeled_method` "norm_stats" (the
            backbone's BatchNorm statistics blended towards theirs before the seed fit, kept
            in `model.adapted_backbone_buffers`: lam.norm_stats) and "self_train"
            (pseudo-labels of the seed-trained head on every one of them, refit,
            interpolation: lam.adapt); ignored by "none". The caller decides how many
            (tasks.train: unlabeled_frames).
    """
    settings = settings or TrainSettings()
    if settings.unlabeled_method not in UNLABELED_METHODS:
        raise LamflowError(
            f"unknown unlabeled_method {settings.unlabeled_method!r}; "
            f"known: {', '.join(UNLABELED_METHODS)}"
        )
    if not len(images) and not isinstance(model.adapter, ClassMapAdapter):
        raise LamflowError(
            "no seed frame: only a class map head (a source-network backbone) labels without seeds"
        )
    start = time.perf_counter()
    has_unlabeled = unlabeled is not None and len(unlabeled) > 0
    norm_stats = has_unlabeled and settings.unlabeled_method == "norm_stats"
    self_train = has_unlabeled and bool(len(images)) and settings.unlabeled_method == "self_train"
    # stages: [norm statistics] + the seed fit's two + [self-training]
    before, total_extra = int(norm_stats), int(norm_stats) + int(self_train)
    seed_progress = progress
    if progress is not None and total_extra:
        outer = progress

        def seed_progress(stage: int, total: int, loss: float) -> None:
            outer(stage + before, total + total_extra, loss)

    if norm_stats and model.adapted_backbone_buffers:
        raise LamflowError(
            "the backbone's statistics are already adapted to unlabeled frames: "
            "norm_stats needs a freshly built model (it would blend on top of them)"
        )
    if norm_stats and unlabeled is not None:
        model.adapted_backbone_buffers = tuple(
            adapt_norm_statistics(model.backbone, unlabeled, settings.norm_blend)
        )
        if progress is not None:
            progress(1, 2 + total_extra if len(images) else 1, float("nan"))
    if not len(images):  # zero seeds: the backbone's knowledge (and its statistics) only
        return TrainReport(
            seconds=time.perf_counter() - start,
            views=0,
            final_loss=float("nan"),
            class_pixels=[0] * model.num_classes,
            losses=[],
        )
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
            progress(3 + before, 3 + before, losses[-1] if losses else float("nan"))
    return TrainReport(
        seconds=time.perf_counter() - start,
        views=len(views),
        final_loss=float(losses[-1]) if losses else float("nan"),
        class_pixels=counts,
        losses=losses,
    )
