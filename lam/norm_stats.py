"""Re-estimating a frozen backbone's BatchNorm statistics on the drives it will label.

A network trained on Cityscapes normalises every layer with Cityscapes' statistics. CamVid's
drives differ in light, colour and scale (0001TP is filmed at dusk), so the activations the
network meets are shifted and scaled away from what its later layers learned. Re-estimating
each BatchNorm's running mean and variance on the target drives' frames (AdaBN, Li et al.,
"Revisiting batch normalization for practical domain adaptation", 2016) moves them back, with
no label and no gradient: one forward pass over a few dozen frames.

Fully replacing the statistics over-corrects (a drive's own class mix becomes its "normal");
blending half-way between the source's and the target's did best on the cross-drive folds of
bench/quality.py (zero seeds, every 3rd train frame, docs/annotator.md): fold mean 54.45 with
the source statistics, 51.83 replaced (1.0), 56.86 at 0.3, 57.24 at 0.5, 56.09 at 0.7.

Only the frames' pixels are read here: their labels never exist in this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lam.errors import LamflowError

_STATISTICS = ("running_mean", "running_var")


def _norm_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """(qualified name, layer) of every BatchNorm that tracks running statistics."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def norm_statistics_keys(module: nn.Module) -> list[str]:
    """State-dict keys of every running mean and variance in `module`: what
    `adapt_norm_statistics` changes, and all a model artefact may carry of its backbone."""
    return [
        f"{name}.{stat}" if name else stat
        for name, _ in _norm_layers(module)
        for stat in _STATISTICS
    ]


def _statistics(
    layer: nn.modules.batchnorm._BatchNorm,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(running_mean, running_var, num_batches_tracked) of a layer that tracks them."""
    mean, var, count = layer.running_mean, layer.running_var, layer.num_batches_tracked
    if mean is None or var is None or count is None:  # excluded by _norm_layers
        raise LamflowError(f"{type(layer).__name__} tracks no running statistics")
    return mean, var, count


def _same_shape_batches(frames: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of `frames` in order, cut into batches of at most `batch_size` frames of one
    shape (a new batch starts wherever the shape changes, so drops of several cameras work)."""
    batches: list[list[int]] = []
    for i, frame in enumerate(frames):
        if (
            batches
            and len(batches[-1]) < batch_size
            and frames[batches[-1][0]].shape == frame.shape
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def adapt_norm_statistics(
    backbone: nn.Module,
    frames: Sequence[np.ndarray],
    blend: float,
    batch_size: int = 4,
) -> list[str]:
    """Blend every BatchNorm's running statistics of `backbone` towards those of `frames`.

    new = blend * target + (1 - blend) * source, where target is the running average of the
    per-batch statistics while `frames` pass through the backbone with its BatchNorms in
    training mode (each layer already sees inputs normalised by the target's statistics of
    the layers before it, as AdaBN does). The learned scales and shifts do not change, nor
    does anything else in the backbone.

    Args:
        backbone: called as backbone((B, 3, H, W) uint8 tensor); changed in place, left in
            eval mode. On an error its statistics are restored.
        frames: (H, W, 3) uint8 RGB frames of the target drives (any sizes).
        blend: 0 keeps the source statistics, 1 replaces them by the target's.
        batch_size: frames a forward pass (statistics are averaged over batches).

    Returns:
        The state-dict keys of `backbone` that changed (each layer's running mean and
        variance), for the model artefact to carry; empty when `frames` is empty or
        blend is 0.
    """
    if not 0.0 <= blend <= 1.0:
        raise LamflowError(f"norm_blend must be in [0, 1], got {blend}")
    if batch_size < 1:
        raise LamflowError(f"batch_size must be >= 1, got {batch_size}")
    layers = _norm_layers(backbone)
    if not layers:
        raise LamflowError(
            f"{type(backbone).__name__} has no BatchNorm layer whose statistics could adapt"
        )
    if not len(frames) or blend == 0.0:
        return []
    for i, frame in enumerate(frames):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise LamflowError(
                f"frame {i} must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}"
            )
    stats = {name: _statistics(m) for name, m in layers}  # the live buffers
    saved = {name: tuple(t.clone() for t in live) for name, live in stats.items()}
    momenta = {name: m.momentum for name, m in layers}
    device = next(backbone.parameters()).device
    try:
        for _, m in layers:
            m.reset_running_stats()
            m.momentum = None  # None = cumulative average over the batches
            m.train()
        for batch in _same_shape_batches(frames, batch_size):
            x = torch.from_numpy(np.stack([frames[i] for i in batch])).permute(0, 3, 1, 2)
            backbone(x.to(device))
    except BaseException:
        for name, live in stats.items():
            for now, before in zip(live, saved[name]):
                now.copy_(before)
        raise
    finally:
        backbone.eval()
        for name, m in layers:
            m.momentum = momenta[name]
    for name, (mean, var, count) in stats.items():
        source_mean, source_var, source_count = saved[name]
        mean.mul_(blend).add_(source_mean, alpha=1.0 - blend)
        var.mul_(blend).add_(source_var, alpha=1.0 - blend)
        count.copy_(source_count)  # only the statistics change
    return norm_statistics_keys(backbone)
