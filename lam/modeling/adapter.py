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

    Input: list of (B, channels[i], h_i, w_i). Output: (B, C, H / out_stride, W / out_stride).
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        num_classes: int,
        hidden: int = 0,
        relu: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        out = hidden if hidden > 0 else num_classes
        self.proj = nn.ModuleList(nn.Conv2d(c, out, 1, bias=False) for c in channels)
        self.bias = nn.Parameter(torch.zeros(out))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.hidden = nn.Conv2d(hidden, num_classes, 1) if hidden > 0 else None
        self.relu = relu
        self.num_classes = num_classes

    def forward(self, taps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        total = None
        for feat, proj in zip(taps, self.proj):
            feat = self.dropout(F.normalize(feat, dim=1))
            y = proj(feat)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        assert total is not None  # noqa: S101 - internal invariant: at least one tap
        logits = total + self.bias.view(1, -1, 1, 1)
        if self.hidden is not None:
            logits = self.hidden(F.relu(logits))
        return F.relu(logits) if self.relu else logits
