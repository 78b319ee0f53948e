"""Semantic Class Adapter: per-pixel 1x1 convolution from backbone features to C class logits."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SemanticClassAdapter(nn.Module):
    """Maps multi-scale taps to class logits at one output stride.

    Each tap is L2-normalised over channels (so no tap dominates by magnitude), projected by its
    own 1x1 conv and bilinearly resized to the output grid; the projections are summed. This is
    exactly a 1x1 conv over the channel-concatenation of the resized taps (resizing and a 1x1
    conv commute), done in the cheaper order. An optional ReLU follows, as in the LAM paper.

    Because the linear case is a per-pixel linear model, it can be fitted on features sampled at
    a few thousand pixels (`pixel_features`) and written back with `set_linear`; that is how
    `lam.train` fits it in seconds instead of back-propagating through dense maps.

    Input: list of (B, channels[i], h_i, w_i). Output: (B, C, H / out_stride, W / out_stride).
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        num_classes: int,
        hidden: int = 0,
        relu: bool = False,
        dropout: float = 0.0,
        pos_bumps: int = 0,
    ) -> None:
        super().__init__()
        out = hidden if hidden > 0 else num_classes
        self.channels = tuple(int(c) for c in channels)
        self.pos_bumps = int(pos_bumps)
        # Learned per-output function of the normalised row (sky on top, road below): weights
        # on `pos_bumps` fixed Gaussian bumps of y in [0, 1]. Cheap: one (out, h) add per frame.
        self.pos_weight = nn.Parameter(torch.zeros(out, self.pos_bumps)) if pos_bumps else None
        self.proj = nn.ModuleList(nn.Conv2d(c, out, 1, bias=False) for c in channels)
        self.bias = nn.Parameter(torch.zeros(out))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.hidden = nn.Conv2d(hidden, num_classes, 1) if hidden > 0 else None
        self.relu = relu
        self.num_classes = num_classes

    @property
    def is_linear(self) -> bool:
        """True when logits are an affine function of the concatenated normalised taps."""
        return self.hidden is None and not self.relu

    def forward(self, taps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        # Projections of taps that share a grid are summed before one resize (exact: the
        # resize is linear), e.g. the last block and the head at stride 32. Everything runs
        # channels-last: torch's CPU bilinear resize of many channels is 3-4x faster in that
        # layout, and the sums are done in place (no fresh 20 MB tensors per batch).
        cl = torch.channels_last
        by_grid: dict[tuple[int, int], torch.Tensor] = {}
        for feat, proj in zip(taps, self.proj):
            # W (x / |x|) = (W x) / |x|: dividing the C projected channels by the norm is
            # cheaper than dividing every tap channel (24-1280 of them) first, and the same.
            feat = feat.contiguous(memory_format=cl)
            inv_norm = _inverse_norm(feat)
            y = F.conv2d(self.dropout(feat), proj.weight.to(feat.dtype))
            y = y.mul_(inv_norm).contiguous(memory_format=cl)
            grid = (int(y.shape[-2]), int(y.shape[-1]))
            if grid in by_grid:
                by_grid[grid].add_(y)
            else:
                by_grid[grid] = y
        total: torch.Tensor | None = by_grid.pop(tuple(size), None)
        for y in by_grid.values():
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total.add_(y)
        if total is None:
            raise ValueError("adapter needs at least one tap")
        logits = total.add_(self.bias.view(1, -1, 1, 1).to(total.dtype))
        if self.pos_weight is not None:
            rows = (torch.arange(size[0], device=total.device, dtype=torch.float32) + 0.5) / size[0]
            pos = self.pos_weight @ row_basis(rows, self.pos_bumps).T  # (out, h)
            logits = logits + pos.to(total.dtype)[None, :, :, None]
        if self.hidden is not None:
            logits = self.hidden(F.relu_(logits))
        logits = logits.contiguous()  # callers (OptOU) get the usual NCHW layout
        return F.relu(logits) if self.relu else logits

    def point_features(
        self, taps: list[torch.Tensor], points: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """`pixel_features` plus this adapter's positional basis: (N, sum(channels) + bumps)."""
        return pixel_features(taps, points, image_size, self.pos_bumps)

    def forward_points(self, features: torch.Tensor) -> torch.Tensor:
        """Logits at sampled pixels: (N, sum(channels) [+ pos_bumps]) from `point_features`.

        Equal to `forward` read at those pixels (up to where the bilinear resize happens).
        """
        weights = [p.weight.flatten(1) for p in self.proj]
        if self.pos_weight is not None:
            weights.append(self.pos_weight)
        weight = torch.cat(weights, dim=1)  # (out, D)
        logits = features @ weight.T + self.bias
        if self.hidden is not None:
            logits = F.relu(logits) @ self.hidden.weight.flatten(1).T + self.hidden.bias
        return F.relu(logits) if self.relu else logits

    @torch.no_grad()
    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Write a fitted linear model: weight (sum(channels), C), bias (C,) float."""
        if not self.is_linear:
            raise ValueError("set_linear needs a linear adapter (hidden=0, relu=False)")
        expected = (sum(self.channels) + self.pos_bumps, self.num_classes)
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight shape {tuple(weight.shape)} != expected {expected}")
        offset = 0
        for c, proj in zip(self.channels, self.proj):
            proj.weight.copy_(weight[offset : offset + c].T.reshape(-1, c, 1, 1))
            offset += c
        if self.pos_weight is not None:
            self.pos_weight.copy_(weight[offset:].T)
        self.bias.copy_(bias)


def _inverse_norm(feat: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, 1, h, w) 1 / max(||x||, 1e-12) over channels, as `F.normalize` uses."""
    return torch.linalg.vector_norm(feat, dim=1, keepdim=True).clamp_min_(1e-12).reciprocal_()


def row_basis(rows: torch.Tensor, bumps: int) -> torch.Tensor:
    """(N,) normalised row coordinates in [0, 1] -> (N, bumps) Gaussian bumps spanning [0, 1]."""
    centres = torch.linspace(0.0, 1.0, bumps, device=rows.device)
    width = 1.0 / max(1, bumps - 1)
    return torch.exp(-0.5 * ((rows[:, None].float() - centres) / width) ** 2)


def pixel_features(
    taps: list[torch.Tensor], points: torch.Tensor, image_size: tuple[int, int], pos_bumps: int = 0
) -> torch.Tensor:
    """Concatenated L2-normalised taps sampled bilinearly at pixel centres.

    Args:
        taps: list of (1, channels[i], h_i, w_i) float features of one frame.
        points: (N, 2) float (y, x) pixel coordinates in the full-resolution frame.
        image_size: (H, W) of that frame.
        pos_bumps: if > 0, append that many Gaussian bumps of the normalised row (`row_basis`).
    Returns:
        (N, sum(channels) [+ pos_bumps]) float32, the features the adapter sees there.
    """
    h, w = image_size
    gy = (points[:, 0] + 0.5) / h * 2 - 1
    gx = (points[:, 1] + 0.5) / w * 2 - 1
    grid = torch.stack([gx, gy], -1).view(1, 1, -1, 2).float()
    out = []
    for feat in taps:
        f = F.normalize(feat.float(), dim=1)
        out.append(
            F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=False)[
                0, :, 0
            ].T
        )
    if pos_bumps:
        out.append(row_basis((points[:, 0] + 0.5) / h, pos_bumps))
    return torch.cat(out, dim=1)
