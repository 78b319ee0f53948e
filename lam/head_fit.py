"""Fitting the annotator's head on seed views: the primitives both seed training
(`lam.train`) and adaptation to the drop (`lam.adapt`) build on.

The backbone is frozen, so each augmented view of each seed passes through it exactly once and
its taps are cached. The head is then fitted in two cheap stages:

1. the Semantic Class Adapter, a per-pixel model, is fitted on features sampled at a few
   thousand labelled pixels per view (full-batch L-BFGS on class-balanced cross-entropy), so no
   dense map is ever back-propagated;
2. with the adapter fixed, OptOU's few scalars (step sizes, prototype temperature) are fitted
   with Adam through the unrolled steps on a couple of views at the output stride.

That is what makes one-seed training take seconds on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from lam.errors import LamflowError
from lam.modeling.adapter import SemanticClassAdapter
from lam.modeling.class_map import ClassMapAdapter
from lam.modeling.lam import LabelAnythingModel
from lam.settings import TrainSettings


@dataclass
class TrainReport:
    seconds: float
    views: int
    final_loss: float
    class_pixels: list[int]
    losses: list[float] = field(default_factory=list)


@dataclass
class View:
    """One frame (or augmented copy) with its cached frozen features.

    taps: backbone taps, each (1, channels[i], h_i, w_i); image: (1, 3, H, W) uint8;
    full_label: (1, H, W) int64 ids at full resolution (ignore_index = unlabelled);
    label: (1, h, w) int64 ids at the output stride;
    full_weight: optional (1, H, W) float32 per-pixel trust in [0, 1] (a zero-shot seed's
    confidence); None = every labelled pixel counts fully, as for a human seed.
    """

    taps: list[torch.Tensor]
    image: torch.Tensor
    full_label: torch.Tensor
    label: torch.Tensor
    full_weight: torch.Tensor | None = None


def _augmented_views(
    image: np.ndarray,
    label: np.ndarray,
    scales: Sequence[float],
    hflip: bool,
    weight: np.ndarray | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(H, W, 3) uint8 + (H, W) ids [+ (H, W) float weights] -> list of views
    ((1, 3, h, w) uint8, (1, h, w) int64, (1, h, w) float32 or None); weights follow the
    label (nearest resize, same flips)."""
    # A copy: decoded frames may be read-only views of the decoder's buffer.
    img = torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1)[None]
    lab = torch.from_numpy(np.array(label, order="C")).long()[None, None]
    wgt = None if weight is None else torch.from_numpy(np.array(weight, np.float32))[None, None]
    views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for s in scales:
        if s == 1.0:
            im_s, lb_s, wt_s = img, lab, wgt
        else:
            size = (max(8, round(img.shape[2] * s)), max(8, round(img.shape[3] * s)))
            im_s = F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False)
            im_s = im_s.round().clamp(0, 255).to(torch.uint8)
            lb_s = F.interpolate(lab.float(), size=size, mode="nearest").long()
            wt_s = None if wgt is None else F.interpolate(wgt, size=size, mode="nearest")
        w0 = None if wt_s is None else wt_s[:, 0]
        views.append((im_s, lb_s[:, 0], w0))
        if hflip:
            views.append((im_s.flip(-1), lb_s[:, 0].flip(-1), None if w0 is None else w0.flip(-1)))
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
    model: LabelAnythingModel, views: Sequence[View], num_classes: int, ignore: int
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


def build_views(
    model: LabelAnythingModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    scales: Sequence[float] = (1.0,),
    hflip: bool = False,
    pixel_weights: Sequence[np.ndarray | None] | None = None,
) -> list[View]:
    """Frames (H, W, 3) uint8 + ids (H, W) -> augmented views with cached taps.

    pixel_weights: optional per frame an (H, W) float map in [0, 1] (or None = all 1).
    """
    if len(images) != len(labels) or not len(images):
        raise LamflowError(
            f"need matching, non-empty images and labels, got {len(images)}/{len(labels)}"
        )
    weights = list(pixel_weights) if pixel_weights is not None else [None] * len(images)
    if len(weights) != len(images):
        raise LamflowError(f"{len(weights)} pixel-weight maps for {len(images)} frames")
    for i, (frame, frame_label, w) in enumerate(zip(images, labels, weights)):
        if frame.shape[:2] != frame_label.shape:
            raise LamflowError(
                f"frame {i}: label size {frame_label.shape} differs from frame {frame.shape[:2]}"
            )
        if w is not None and (w.shape != frame_label.shape or w.min() < 0 or w.max() > 1):
            raise LamflowError(
                f"frame {i}: pixel weights must be {frame_label.shape} in [0, 1], got "
                f"{w.shape} in [{float(w.min()):.3g}, {float(w.max()):.3g}]"
            )
    views: list[View] = []
    for image, label, w in zip(images, labels, weights):
        for im, lab, wt in _augmented_views(image, label, scales, hflip, w):
            taps = model.extract(im)
            size = model.out_size(tuple(im.shape[-2:]))
            views.append(View(taps, im, lab, _downsample_label(lab, size), wt))
    return views


def _sample_pixels(
    views: Sequence[View],
    per_view: int,
    ignore: int,
    gen: torch.Generator,
    adapter: SemanticClassAdapter | ClassMapAdapter,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, D) float32, ids (N,) int64 and pixel weights (N,) float32 at up to
    `per_view` labelled pixels per view (weights 1 for views without a weight map).

    Pixels of weight 0 count as unlabelled: they are never sampled.
    """
    feats, ids, weights = [], [], []
    for view in views:
        lab = view.full_label[0]
        usable = lab != ignore
        if view.full_weight is not None:
            usable &= view.full_weight[0] > 0
        ys, xs = torch.nonzero(usable, as_tuple=True)
        if len(ys) == 0:
            continue
        pick = torch.randperm(len(ys), generator=gen)[:per_view]
        points = torch.stack([ys[pick], xs[pick]], 1).float()
        feats.append(adapter.point_features(view.taps, points, tuple(lab.shape)))
        ids.append(lab[ys[pick], xs[pick]])
        if view.full_weight is None:
            weights.append(torch.ones(len(pick)))
        else:
            weights.append(view.full_weight[0][ys[pick], xs[pick]].float())
    if not feats:
        raise LamflowError("labels contain no labelled pixel (all void)")
    return torch.cat(feats), torch.cat(ids), torch.cat(weights)


def _fit_adapter(
    model: LabelAnythingModel,
    feats: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    settings: TrainSettings,
    sample_weight: torch.Tensor | None = None,
) -> list[float]:
    """Full-batch fit of the adapter on sampled pixels; returns the loss history."""
    adapter = model.adapter
    params = [p for p in adapter.parameters() if p.requires_grad]
    losses: list[float] = []
    if not params:  # nothing to fit (a class map head whose bias is kept at zero)
        return losses

    def objective() -> torch.Tensor:
        logits = adapter.forward_points(feats)
        if sample_weight is None:
            ce = F.cross_entropy(logits, ids, weight=weights)
        else:
            per = F.cross_entropy(logits, ids, weight=weights, reduction="none")
            ce = (per * sample_weight).sum() / (weights[ids] * sample_weight).sum().clamp(min=1e-6)
        reg = sum((p**2).sum() for p in params if p.ndim > 1)
        if isinstance(adapter, ClassMapAdapter):  # its biases, towards the network's classes
            reg_bias = (adapter.bias**2).sum()  # the one parameter a class map fits here
            return ce + settings.weight_decay * reg + settings.class_map_bias_decay * reg_bias
        return ce + settings.weight_decay * reg

    adapter.train()
    if settings.optimizer == "lbfgs":
        optim = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=settings.iterations,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optim.zero_grad()
            loss = objective()
            loss.backward()
            losses.append(float(loss.detach()))
            return loss

        optim.step(closure)
    elif settings.optimizer == "adam":
        adam = torch.optim.Adam(params, lr=settings.lr)
        for _ in range(settings.iterations):
            adam.zero_grad()
            loss = objective()
            loss.backward()
            adam.step()
            losses.append(float(loss.detach()))
    else:
        raise LamflowError(f"unknown optimizer {settings.optimizer!r}; known: 'lbfgs', 'adam'")
    return losses


@torch.no_grad()
def _anchor_unseen_biases(adapter: ClassMapAdapter, seen: torch.Tensor) -> None:
    """Give the classes no seed shows the mean bias of the classes the seeds show.

    The seeds carry no evidence about an unseen class except as a competitor, so the fit
    drives its bias down without limit (a mapped class would then never be predicted, though
    the source network knows it); the mean of the fitted biases is the neutral choice.
    seen: (C,) bool.
    """
    if seen.any() and not seen.all():
        adapter.bias[~seen] = adapter.bias[seen].mean()


def _fit_optou(
    model: LabelAnythingModel,
    views: Sequence[View],
    weights: torch.Tensor,
    ignore: int,
    settings: TrainSettings,
    rng: np.random.Generator,
) -> list[float]:
    """Adam on OptOU's step sizes (and the prototype temperature) with the adapter fixed."""
    params = list(model.optou.parameters())
    if model.prototype_head is not None:
        params += list(model.prototype_head.parameters())
    if settings.optou_iterations <= 0 or model.optou.steps == 0 or not params:
        return []
    with torch.no_grad():
        cached = []
        for view in views:
            size = model.out_size(tuple(view.image.shape[-2:]))
            cached.append(model.adapter(view.taps, size))
    optim = torch.optim.Adam(params, lr=settings.optou_lr)
    losses = []
    for _ in range(settings.optou_iterations):
        batch = rng.choice(len(views), size=min(settings.batch_views, len(views)), replace=False)
        optim.zero_grad()
        total = torch.zeros(())
        for j in batch:
            view = views[int(j)]
            logits = model.refine(cached[int(j)], view.taps, view.image)
            total = total + F.cross_entropy(logits, view.label, weight=weights, ignore_index=ignore)
        loss = total / len(batch)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    return losses


def fit_head_on_views(
    model: LabelAnythingModel,
    views: Sequence[View],
    ignore_index: int,
    settings: TrainSettings,
    view_weights: Sequence[float] | None = None,
    view_pixels: Sequence[int] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[list[float], list[int]]:
    """Fit adapter, prototypes and OptOU on cached views; returns (losses, class pixel counts).

    view_weights: optional per-view weight of its pixels in the adapter loss (e.g. to trust
    pseudo-labelled frames less than seeds); view_pixels: optional per-view pixel budget
    (default settings.pixels_per_view).
    """
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    c = model.num_classes
    counts = torch.zeros(c, dtype=torch.long)
    for view in views:
        lab = view.full_label[view.full_label != ignore_index]
        counts += torch.bincount(lab.clamp(0, c - 1), minlength=c)
    if counts.sum() == 0:
        raise LamflowError("seed labels contain no labelled pixel (all void)")
    weights = class_weights(counts, settings.class_balance_power)
    _set_prototypes(model, views, c, ignore_index)
    feats, ids, sample_weight = [], [], []
    budgets = [settings.pixels_per_view] * len(views) if view_pixels is None else list(view_pixels)
    shrink = min(1.0, settings.max_pixels / max(1, sum(budgets)))
    for i, view in enumerate(views):
        if not (view.full_label != ignore_index).any():
            continue
        budget = max(1, int(budgets[i] * shrink))
        try:
            f, y, pw = _sample_pixels([view], budget, ignore_index, gen, model.adapter)
        except LamflowError:
            continue  # every labelled pixel of this view has weight 0
        feats.append(f)
        ids.append(y.clamp(0, c - 1))
        w = 1.0 if view_weights is None else float(view_weights[i])
        sample_weight.append(pw * w)
    if not feats:
        raise LamflowError("seed labels contain no labelled pixel of weight > 0")
    weighted = view_weights is not None or any(v.full_weight is not None for v in views)
    sw = torch.cat(sample_weight) if weighted else None
    all_feats, all_ids = torch.cat(feats), torch.cat(ids)
    if isinstance(model.adapter, ClassMapAdapter):
        if settings.class_map_prior is not None:
            # where the source classes fall on the seeds' labels, shrunk towards the name map
            model.adapter.estimate(
                all_feats, all_ids, settings.class_map_prior, torch.cat(sample_weight)
            )
        if not settings.class_map_fit_bias:
            model.adapter.bias.requires_grad_(False)
    losses = _fit_adapter(model, all_feats, all_ids, weights, settings, sw)
    if isinstance(model.adapter, ClassMapAdapter) and settings.class_map_fit_bias:
        _anchor_unseen_biases(model.adapter, counts > 0)
    if progress is not None:
        progress(1, 2, losses[-1] if losses else float("nan"))
    labelled = [v for i, v in enumerate(views) if view_weights is None or view_weights[i] >= 1.0]
    losses += _fit_optou(model, labelled or list(views), weights, ignore_index, settings, rng)
    if progress is not None:
        progress(2, 2, losses[-1] if losses else float("nan"))
    model.eval()
    return losses, [int(x) for x in counts]
