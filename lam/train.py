"""Training the annotator's head from a few seed frames.

The backbone is frozen, so each augmented view of each seed is passed through it exactly once
and its taps are cached; the adapter, prototype temperature and OptOU step sizes are then fitted
on the cache with Adam. That is what makes one-seed training take seconds on a laptop CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from lam.errors import LamflowError
from lam.modeling.lam import LabelAnythingModel


@dataclass
class TrainSettings:
    """Hyperparameters of seed training (all have working defaults)."""

    iterations: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_views: int = 4
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    hflip: bool = True
    class_balance_power: float = 0.5  # weight_c = (median_freq / freq_c) ** power; 0 = unweighted
    seed: int = 0


@dataclass
class TrainReport:
    seconds: float
    views: int
    final_loss: float
    class_pixels: list[int]
    losses: list[float] = field(default_factory=list)


@dataclass
class _View:
    taps: list[torch.Tensor]
    image: torch.Tensor  # (1, 3, H, W) uint8
    label: torch.Tensor  # (1, h, w) int64 at the output stride


def _augmented_views(
    image: np.ndarray, label: np.ndarray, scales: Sequence[float], hflip: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(H, W, 3) uint8 + (H, W) ids -> list of ((1, 3, h, w) uint8, (1, h, w) int64) views."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    lab = torch.from_numpy(np.ascontiguousarray(label)).long()[None, None]
    views = []
    for s in scales:
        if s == 1.0:
            im_s, lb_s = img, lab
        else:
            size = (max(8, round(img.shape[2] * s)), max(8, round(img.shape[3] * s)))
            im_s = F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False)
            im_s = im_s.round().clamp(0, 255).to(torch.uint8)
            lb_s = F.interpolate(lab.float(), size=size, mode="nearest").long()
        views.append((im_s, lb_s[:, 0]))
        if hflip:
            views.append((im_s.flip(-1), lb_s[:, 0].flip(-1)))
    return views


def _downsample_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) ids -> (1, h, w) by nearest sampling at cell centres (ids are never averaged)."""
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()


def class_weights(counts: torch.Tensor, power: float) -> torch.Tensor:
    """(C,) pixel counts -> (C,) loss weights (median-frequency balancing, softened by `power`).

    Classes with no pixels get weight 0 (they cannot contribute to the loss anyway).
    """
    present = counts > 0
    weights = torch.zeros_like(counts, dtype=torch.float32)
    if present.any() and power > 0:
        freq = counts[present].float() / counts[present].sum()
        weights[present] = (freq.median() / freq) ** power
    else:
        weights[present] = 1.0
    return weights


@torch.no_grad()
def _set_prototypes(
    model: LabelAnythingModel, views: list[_View], num_classes: int, ignore: int
) -> None:
    head = model.prototype_head
    if head is None:
        return
    sums = [torch.zeros(num_classes, c) for c in model.backbone.channels]
    counts = torch.zeros(num_classes)
    for view in views:
        for i, feat in enumerate(view.taps):
            f = F.normalize(feat, dim=1)[0]  # (D, h, w)
            lab = _downsample_label(view.label, tuple(f.shape[-2:]))[0].reshape(-1)
            keep = lab != ignore
            onehot = F.one_hot(lab[keep].clamp(0, num_classes - 1), num_classes).float()
            sums[i] += onehot.T @ f.reshape(f.shape[0], -1)[:, keep].T
            if i == 0:
                counts += onehot.sum(0)
    valid = counts > 0
    head.set_prototypes([s / counts.clamp(min=1)[:, None] for s in sums], valid)


def train_head(
    model: LabelAnythingModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    ignore_index: int,
    settings: TrainSettings | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainReport:
    """Fit the model's head on seed frames.

    Args:
        model: built annotator; its backbone stays frozen.
        images: seed frames, each (H, W, 3) uint8 RGB.
        labels: matching (H, W) uint8 class ids; `ignore_index` marks unlabelled pixels.
        ignore_index: void id (excluded from the loss and the prototypes).
        settings: hyperparameters; deterministic for a given `settings.seed`.
        progress: called as progress(iteration, total, loss) for progress bars.
    """
    settings = settings or TrainSettings()
    if len(images) != len(labels) or not images:
        raise LamflowError(
            f"need matching, non-empty seed images and labels, got {len(images)}/{len(labels)}"
        )
    for i, (im, lb) in enumerate(zip(images, labels)):
        if im.shape[:2] != lb.shape:
            raise LamflowError(
                f"seed {i}: label size {lb.shape} differs from frame size {im.shape[:2]}"
            )
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    start = time.perf_counter()
    c = model.num_classes

    views: list[_View] = []
    for image, label in zip(images, labels):
        for im, lb in _augmented_views(image, label, settings.scales, settings.hflip):
            taps = model.extract(im)
            size = model.out_size(tuple(im.shape[-2:]))
            views.append(_View(taps=taps, image=im, label=_downsample_label(lb, size)))

    counts = torch.zeros(c, dtype=torch.long)
    for view in views:
        lab = view.label[view.label != ignore_index]
        counts += torch.bincount(lab.clamp(0, c - 1), minlength=c)
    if counts.sum() == 0:
        raise LamflowError("seed labels contain no labelled pixel (all void)")
    weights = class_weights(counts, settings.class_balance_power)
    _set_prototypes(model, views, c, ignore_index)

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=settings.iterations)
    model.train()
    losses: list[float] = []
    for it in range(settings.iterations):
        batch = rng.choice(len(views), size=min(settings.batch_views, len(views)), replace=False)
        optim.zero_grad()
        total = torch.zeros(())
        for j in batch:
            view = views[int(j)]
            logits = model.head(view.taps, view.image)
            total = total + F.cross_entropy(
                logits, view.label, weight=weights, ignore_index=ignore_index
            )
        loss = total / len(batch)
        loss.backward()
        optim.step()
        sched.step()
        losses.append(float(loss))
        if progress is not None:
            progress(it + 1, settings.iterations, float(loss))
    model.eval()
    return TrainReport(
        seconds=time.perf_counter() - start,
        views=len(views),
        final_loss=float(np.mean(losses[-20:])) if losses else float("nan"),
        class_pixels=[int(x) for x in counts],
        losses=losses,
    )
