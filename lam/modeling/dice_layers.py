"""Building blocks of DiCENet: the dimension-wise convolution (DiCE) unit and its neighbours.

Mehta, Hajishirzi, Rastegari: "DiCENet: Dimension-wise Convolutions for Efficient Networks",
IEEE TPAMI 2021 (arXiv:1906.03516). A DiCE unit convolves a (C, H, W) volume three times with
depth-wise 3x3 kernels, once along each dimension: over (H, W) per channel as usual, over
(C, W) per row, and over (C, H) per column. The row-wise and column-wise kernels are one per
row / column, so their count is fixed by the spatial size the unit is built for; at any other
size the volume is resampled to the built size along that dimension, convolved, and resampled
back (bilinear with aligned corners when enlarging, adaptive average pooling when shrinking),
which is what the authors' code does and what the published weights were trained with.

Submodule attribute names (`cbr`, `br`, `conv_channel`, `layer_right`, ...) are those of the
published state dicts, so the authors' weights load key for key; everything else is ours.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ConvNormPReLU(nn.Module):
    """k x k convolution (no bias, 'same' padding) -> BatchNorm -> per-channel PReLU.

    (B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel,
                stride=stride,
                padding=(kernel - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class NormPReLU(nn.Module):
    """BatchNorm -> per-channel PReLU; (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave `groups` equal channel blocks: [a0 a1 .. | b0 b1 ..] -> [a0 b0 a1 b1 ..].

    (B, C, H, W) -> (B, C, H, W); C must be a multiple of `groups`.
    """
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ChannelShuffle(nn.Module):
    """`channel_shuffle` as a module, for use inside `nn.Sequential` (it holds no tensors)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


def resize_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (B, C, h, w) to (B, C, *size), changing one spatial axis at a time.

    Enlarging uses bilinear interpolation with aligned corners, shrinking adaptive average
    pooling (an axis kept at its size is untouched by either: both are the identity there).
    This is the resampling the published DiCENet weights were trained with.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == size:
        return x
    grows = size[0] > h if size[0] != h else size[1] > w
    if grows:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.adaptive_avg_pool2d(x, size)


class DimensionWiseConv(nn.Module):
    """The DiCE unit: dimension-wise convolutions, then dimension-wise fusion.

    1. Depth-wise 3x3 convolutions along channels (`conv_channel`, over H x W), rows
       (`conv_height`: one kernel per row, over C x W) and columns (`conv_width`: one kernel per
       column, over C x H); rows and columns are resampled to the built (height, width) first.
    2. The three results are concatenated (3C), normalised, interleaved so that each channel's
       three views sit together, and fused per channel by a grouped 1x1 conv (`weight_avg_layer`).
    3. A grouped 3x3 conv (`proj_layer`) maps C to out_channels, scaled per channel by a
       squeeze-excitation-like gate computed from the fused volume (`linear_comb_layer`).

    (B, in_channels, H, W) -> (B, out_channels, H, W) for any H, W.
    """

    def __init__(self, in_channels: int, out_channels: int, height: int, width: int) -> None:
        super().__init__()
        self.built_hw = (height, width)
        self.conv_channel = _depthwise3x3(in_channels)
        self.conv_width = _depthwise3x3(width)
        self.conv_height = _depthwise3x3(height)
        self.br_act = NormPReLU(3 * in_channels)
        self.weight_avg_layer = ConvNormPReLU(3 * in_channels, in_channels, 1, groups=in_channels)
        self.proj_layer = ConvNormPReLU(
            in_channels, out_channels, 3, groups=math.gcd(in_channels, out_channels)
        )
        # indices 1 and 3 hold the weights, as in the published state dicts
        self.linear_comb_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, in_channels // 4, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels // 4, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        built_h, built_w = self.built_hw
        along_channels = self.conv_channel(x)
        # rows become the "channels" of a depth-wise conv: (B, C, h', W) -> (B, h', C, W)
        rows = resize_grid(x, (built_h, w)).transpose(1, 2)
        along_rows = resize_grid(self.conv_height(rows).transpose(1, 2), (h, w))
        # columns likewise: (B, C, H, w') -> (B, w', H, C)
        cols = resize_grid(x, (h, built_w)).transpose(1, 3)
        along_cols = resize_grid(self.conv_width(cols).transpose(1, 3), (h, w))
        views = self.br_act(torch.cat((along_channels, along_rows, along_cols), dim=1))
        fused = self.weight_avg_layer(channel_shuffle(views, 3))
        return self.proj_layer(fused) * self.linear_comb_layer(fused)


def _depthwise3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)


class StridedDimensionWiseUnit(nn.Module):
    """Down-sampling unit: a strided depth-wise branch beside an avg-pool + DiCE branch.

    (B, C, H, W) -> (B, 2C, ceil(H / 2), ceil(W / 2)); the two branches' channels are
    interleaved. `height`, `width`: the built size of the DiCE unit (the output grid's).
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.left_layer = nn.Sequential(
            ConvNormPReLU(channels, channels, 3, stride=2, groups=channels),
            ConvNormPReLU(channels, channels, 1),
        )
        self.right_layer = nn.Sequential(
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            DimensionWiseConv(channels, channels, height, width),
            ConvNormPReLU(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat((self.left_layer(x), self.right_layer(x)), dim=1)
        return channel_shuffle(both, 2)


class ShuffleDimensionWiseUnit(nn.Module):
    """ShuffleNetv2-style unit with a DiCE unit in its transformed half.

    The first `round(in_channels / 2)` channels pass through unchanged; the rest go through a
    1x1 ConvNormPReLU and a DiCE unit to make up `out_channels` together with them; the two
    halves are then interleaved. (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, height: int, width: int) -> None:
        super().__init__()
        self.kept = round(0.5 * in_channels)
        grown = out_channels - self.kept
        self.layer_right = nn.Sequential(
            ConvNormPReLU(in_channels - self.kept, grown, 1),
            DimensionWiseConv(grown, grown, height, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, changed = x[:, : self.kept], x[:, self.kept :]
        return channel_shuffle(torch.cat((kept, self.layer_right(changed)), dim=1), 2)
