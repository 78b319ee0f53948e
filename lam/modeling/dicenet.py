"""DiCENet semantic segmentation network (encoder, pyramid-pooling decoder), pure torch.

Mehta, Hajishirzi, Rastegari: "DiCENet: Dimension-wise Convolutions for Efficient Networks",
IEEE TPAMI 2021 (arXiv:1906.03516), segmentation variant as published in the authors'
EdgeNets repository. This is our own implementation, written so that the published Cityscapes
state dict (`dicenet_s_1.75_city_1024x512.pth`: 20 outputs, trainIds 0-18 then background)
loads strictly: attribute names follow the file's keys, the arithmetic follows the paper and
the authors' network, everything else is ours.

Shape contract: input (B, 3, H, W), RGB in [0, 1] normalised with ImageNet mean/std, H and W
multiples of 16; output (B, num_classes, H / 2, W / 2) logits (`logit_stride` = 2), *not*
resized to the input (callers resize once, to whatever size they need).

Input size. The DiCE units' row- and column-wise kernels are one per row / column of the
grid they were built for, so their count is fixed at construction (`input_size`). The
published weights were built for 224 x 224 (28 x 28 grids at stride 8, 14 x 14 at stride 16)
whatever size they were trained or evaluated at; at run time every input size works, because
each DiCE unit resamples its rows / columns to the built count and back (see
`lam.modeling.dice_layers`). So keep `input_size=(224, 224)` to use the published weights and
feed any H, W that are multiples of 16; the authors evaluate the Cityscapes model at 1024x512.

The published file stores its tensors on CUDA: read it with
`torch.load(path, map_location="cpu", weights_only=True)`, then `load_dicenet_state`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from lam.errors import LamflowError
from lam.modeling.dice_layers import (
    ChannelShuffle,
    ConvNormPReLU,
    NormPReLU,
    ShuffleDimensionWiseUnit,
    StridedDimensionWiseUnit,
)
from lam.modeling.state_loading import load_state_strict, state_mismatches

# width s -> encoder channels at strides 2, 4, 8, 16 (the paper's Table; stride 32 unused here)
ENCODER_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.2: (16, 16, 32, 64),
    0.5: (24, 24, 48, 96),
    0.75: (24, 24, 86, 172),
    1.0: (24, 24, 116, 232),
    1.25: (24, 24, 144, 288),
    1.5: (24, 24, 176, 352),
    1.75: (24, 24, 210, 420),
    2.0: (24, 24, 244, 488),
    2.4: (24, 24, 278, 556),
}
# shuffle units after the strided unit at strides 8 and 16
_UNITS_PER_STAGE = (3, 7)
# the (H, W) the published weights' DiCE units were built for
PUBLISHED_BUILD_SIZE = (224, 224)
# pyramid branch scales, largest first (the order of the published `stages.i` weights)
_PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
_MIN_PYRAMID_SIDE = 5
_DECODER_BASE = 16  # decoder channels are 4x, 3x, 2x this at strides 16, 8, 4


class DiCENetEncoder(nn.Module):
    """Image -> features at strides 2, 4, 8, 16.

    level1: 3x3/2 ConvNormPReLU; level2: 3x3/2 max-pool; level3 and level4: one strided unit
    (channels doubled, grid halved) and 3 resp. 7 shuffle units. For s=1.75 the channels are
    24, 24, 210, 420.
    """

    def __init__(self, channels: tuple[int, int, int, int], input_size: tuple[int, int]) -> None:
        super().__init__()
        h8, w8 = input_size[0] // 8, input_size[1] // 8
        self.level1 = ConvNormPReLU(3, channels[0], 3, stride=2)
        self.level2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.level3 = _encoder_stage(channels[1], channels[2], _UNITS_PER_STAGE[0], h8, w8)
        self.level4 = _encoder_stage(
            channels[2], channels[3], _UNITS_PER_STAGE[1], h8 // 2, w8 // 2
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, c_i, H / s, W / s) for s in 2, 4, 8, 16]."""
        feats = [self.level1(x)]
        for level in (self.level2, self.level3, self.level4):
            feats.append(level(feats[-1]))
        return feats


def _encoder_stage(
    in_channels: int, out_channels: int, units: int, height: int, width: int
) -> nn.Sequential:
    """Strided unit (in -> 2 in channels, grid halved) then `units` shuffle units -> out."""
    layers: list[nn.Module] = [StridedDimensionWiseUnit(in_channels, height, width)]
    for i in range(units):
        unit_in = 2 * in_channels if i == 0 else out_channels
        layers.append(ShuffleDimensionWiseUnit(unit_in, out_channels, height, width))
    return nn.Sequential(*layers)


class PyramidContextBlock(nn.Module):
    """Decoder block: project, convolve at five scales, fuse (the paper's efficient pyramid).

    A 1x1 ConvNormPReLU projects to `branch_channels`; each branch resamples the grid by its
    scale (2, 1.5, 1, 0.5, 0.1 of the side, at least 5 pixels; bilinear up, average-pool down),
    applies a depth-wise 3x3 conv and resamples back. The branches are concatenated,
    normalised, interleaved, fused by a grouped 3x3 ConvNormPReLU and a 1x1 conv to
    `out_channels`, then normalised again unless this is the last (logit) block.

    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self, in_channels: int, branch_channels: int, out_channels: int, final: bool = False
    ) -> None:
        super().__init__()
        p, n = branch_channels, len(_PYRAMID_SCALES)
        self.projection_layer = ConvNormPReLU(in_channels, p, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(p, p, 3, padding=1, groups=p, bias=False) for _ in range(n)
        )
        self.merge_layer = nn.Sequential(
            NormPReLU(p * n),
            ChannelShuffle(n),
            ConvNormPReLU(p * n, p, 3, groups=p),
            nn.Conv2d(p, out_channels, 1, bias=final),
        )
        self.br: NormPReLU | None = None if final else NormPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        out = self.merge_layer(torch.cat(list(pyramid_branches(x, self.stages)), dim=1))
        return out if self.br is None else self.br(out)


def pyramid_branches(x: torch.Tensor, stages: nn.ModuleList) -> Iterator[torch.Tensor]:
    """The pyramid's branches of a projected (B, p, H, W) map, each (B, p, H, W), in order.

    Branch k resamples the grid by `_PYRAMID_SCALES[k]` (bilinear up with aligned corners,
    adaptive average pooling down), applies `stages[k]` and resamples back. Shared by
    `PyramidContextBlock` and its inference rewrite (lam.source_fusion).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    for scale, conv in zip(_PYRAMID_SCALES, stages):
        side = (_scaled_side(h, scale), _scaled_side(w, scale))
        if scale > 1.0:
            up = F.interpolate(x, size=side, mode="bilinear", align_corners=True)
            yield F.adaptive_avg_pool2d(conv(up), (h, w))
        elif scale < 1.0:
            down = conv(F.adaptive_avg_pool2d(x, side))
            yield F.interpolate(down, size=(h, w), mode="bilinear", align_corners=True)
        else:
            yield conv(x)


def _scaled_side(side: int, scale: float) -> int:
    # float product then ceil, exactly as the weights were trained (0.1 * 30 -> 4, not 3)
    return max(int(math.ceil(side * scale)), _MIN_PYRAMID_SIDE)


class GatedProjection(nn.Module):
    """Encoder skip projection: grouped 3x3 ConvNormPReLU, scaled by a global channel gate.

    Gate: global average pool -> 1x1 conv -> sigmoid, per output channel.
    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # index 1 holds the weight, as in the published state dicts
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.expansion_layer = ConvNormPReLU(
            in_channels, out_channels, 3, groups=math.gcd(in_channels, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


class DiCENetSegmentation(nn.Module):
    """DiCENet encoder + bottom-up pyramid decoder; logits at stride 2.

    The decoder starts with a pyramid block on the stride-16 features, then three times:
    upsample x2 (bilinear, aligned corners), add the gated projection of the encoder features
    at that stride, BatchNorm + PReLU, pyramid block. Channels 64, 48, 32, then num_classes.

    Args:
        width: channel width s; the published Cityscapes model is s=1.75.
        num_classes: output channels (20 for the published Cityscapes model).
        input_size: (H, W) the DiCE units are *built* for, not the size forward() must get;
            (224, 224) for the published weights (see the module docstring).

    forward: (B, 3, H, W) float, ImageNet-normalised RGB, H and W multiples of 16 ->
    (B, num_classes, H / 2, W / 2) logits.
    """

    logit_stride: int = 2

    def __init__(
        self,
        width: float = 1.75,
        num_classes: int = 20,
        input_size: tuple[int, int] = PUBLISHED_BUILD_SIZE,
    ) -> None:
        super().__init__()
        if width not in ENCODER_CHANNELS:
            raise ValueError(f"unknown DiCENet width {width}; known: {sorted(ENCODER_CHANNELS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if len(input_size) != 2 or min(input_size) < 16 or any(s % 16 for s in input_size):
            raise ValueError(f"input_size must be (H, W) multiples of 16, got {input_size}")
        self.width = width
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        enc = ENCODER_CHANNELS[width]
        dec = (4 * _DECODER_BASE, 3 * _DECODER_BASE, 2 * _DECODER_BASE)
        branch = min(num_classes // 2, _DECODER_BASE)
        self.base_net = DiCENetEncoder(enc, self.input_size)
        # names give the grid for a 256x256 input (strides 16, 8, 4, 2), as in the weights
        self.eff_pool_16x16 = PyramidContextBlock(enc[3], branch, dec[0])
        self.eff_pool_32x32 = PyramidContextBlock(dec[0], branch, dec[1])
        self.eff_pool_64x64 = PyramidContextBlock(dec[1], branch, dec[2])
        self.eff_pool_128x128 = PyramidContextBlock(dec[2], branch, num_classes, final=True)
        self.proj_enc_32x32 = GatedProjection(enc[2], dec[0])
        self.proj_enc_64x64 = GatedProjection(enc[1], dec[1])
        self.proj_enc_128x128 = GatedProjection(enc[0], dec[2])
        self.bu_br_32x32 = _bn_prelu(dec[0])
        self.bu_br_64x64 = _bn_prelu(dec[1])
        self.bu_br_128x128 = _bn_prelu(dec[2])

    #: The decoder by attribute name: its first block, then per step (encoder projection,
    #: norm after its sum with the upsampled map, block). The forward runs these, and
    #: lam.source_fusion folds each step's norm into the block before it.
    decoder_first = "eff_pool_16x16"
    decoder_steps = (
        ("proj_enc_32x32", "bu_br_32x32", "eff_pool_32x32"),
        ("proj_enc_64x64", "bu_br_64x64", "eff_pool_64x64"),
        ("proj_enc_128x128", "bu_br_128x128", "eff_pool_128x128"),
    )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % 16 or w % 16:
            raise ValueError(f"DiCENet needs H and W multiples of 16, got {h}x{w} (H x W)")
        s2, s4, s8, s16 = self.base_net(x)
        y = getattr(self, self.decoder_first)(s16)
        for (project, norm, pyramid), skip in zip(self.decoder_steps, (s8, s4, s2)):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            y = getattr(self, pyramid)(getattr(self, norm)(getattr(self, project)(skip) + y))
        return y


def _bn_prelu(channels: int) -> nn.Sequential:
    # a bare Sequential (keys `0.*`, `1.*`), unlike NormPReLU's `br.*`: the weights differ here
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


def load_dicenet_state(model: DiCENetSegmentation, state: Mapping[str, torch.Tensor]) -> None:
    """Load a published DiCENet state dict strictly (every key, every shape).

    Raises:
        LamflowError: naming missing / unexpected keys and the first shape mismatch; when the
            mismatch is in a DiCE unit's row / column kernels, also the build size to use.
    """
    what = f"DiCENet weights (s={model.width}, {model.num_classes} classes)"
    problems = state_mismatches(model, state)
    if any("conv_height" in p or "conv_width" in p for p in problems):
        hint = (
            f"the model was built with input_size={model.input_size}; the published weights "
            f"need input_size={PUBLISHED_BUILD_SIZE} (any run-time size still works)"
        )
        raise LamflowError(f"{what} do not fit: " + "; ".join(problems) + f"; {hint}")
    load_state_strict(model, state, what)
