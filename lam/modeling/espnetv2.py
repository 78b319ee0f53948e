"""ESPNetv2 for semantic segmentation, written from the paper to load the published weights.

Mehta, Rastegari, Shapiro, Hajishirzi: "ESPNetv2: A Light-weight, Power Efficient, and General
Purpose Convolutional Neural Network", CVPR 2019. The encoder stacks EESP units (a grouped 1x1
reduction, K depth-wise dilated 3x3 branches fused hierarchically, a grouped 1x1 expansion);
strided units run beside an average pool and get the input image back through a small
"input reinforcement" branch. The segmentation decoder of the authors' release (EdgeNets) goes
bottom-up with efficient pyramid pooling blocks and gated encoder skips.

The submodule names follow the keys of the published state dicts (`base_net.level1.conv.weight`,
`bu_dec_l1.merge_layer.3.weight`, ...), so `load_state_strict` fits them key for key; the rest
of the code is our own. Inputs are ImageNet-normalised RGB (see `lam.modeling.source_network`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The bottom-up decoder is the one EdgeNets shares between ESPNetv2 and DiCENet (same blocks,
# same state-dict keys): written once, in lam/modeling/dicenet.py.
from lam.modeling.dicenet import GatedProjection, PyramidContextBlock

# Output channels of level1..level4 per width multiplier (the paper's Table 1 family).
ESPNETV2_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    1.0: (32, 64, 128, 256),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
_BRANCHES = 4  # K parallel dilated branches in every EESP unit
_LEVEL3_UNITS, _LEVEL4_UNITS = 3, 7
# Largest effective kernel size per spatial level: deeper levels see a smaller map, so their
# branches stop growing earlier (a 3x3 kernel takes the place of one that would be too wide).
_RECEPTIVE_LIMITS = (13, 11, 9, 7)


class ConvBNPReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> PReLU, 'same' padding. Keys: conv, bn, act."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm. Keys: conv, bn."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, 1, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BNPReLU(nn.Module):
    """BatchNorm -> PReLU. Keys: bn, act."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedDepthwise(nn.Module):
    """Depth-wise 3x3 convolution with dilation `d` (key: conv)."""

    def __init__(self, channels: int, stride: int, d: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, d, dilation=d, groups=channels,
                              bias=False)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def branch_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Dilation of each depth-wise branch, ascending.

    Branch i would have an effective kernel of 3 + 2i (dilation i + 1); past the level's limit
    it falls back to a plain 3x3. Sorted so that equal receptive fields sit side by side in the
    hierarchical fusion (which is what removes the gridding of dilated kernels).
    """
    sizes = sorted(3 + 2 * i if 3 + 2 * i <= receptive_limit else 3 for i in range(branches))
    return [(k - 1) // 2 for k in sizes]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid unit: reduce, split, transform, hierarchical fusion.

    (B, c_in, H, W) -> (B, c_out, H / stride, W / stride). A stride-2 unit returns before its
    residual and activation: the down-sampler adds the pooled path first.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, branches: int = 4, receptive_limit: int = 7
    ) -> None:
        super().__init__()
        width = c_out // branches
        if width * branches != c_out:
            raise ValueError(f"EESP output {c_out} is not divisible by {branches} branches")
        self.stride = stride
        self.proj_1x1 = ConvBNPReLU(c_in, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(
            DilatedDepthwise(width, stride, d) for d in branch_dilations(branches, receptive_limit)
        )
        self.conv_1x1_exp = ConvBN(c_out, c_out, 1, groups=branches)
        self.br_after_cat = BNPReLU(c_out)
        self.module_act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            fused.append(branch(reduced) + fused[-1])  # hierarchical feature fusion
        return eesp_tail(self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1))), x, self)


def eesp_tail(out: torch.Tensor, x: torch.Tensor, unit: nn.Module) -> torch.Tensor:
    """An EESP unit's end, after its expansion conv: a stride-2 unit returns `out` as it is
    (the down-sampler adds the pooled path first); otherwise the residual where shapes match,
    then the unit's `module_act`. Shared with its inference rewrite (lam.source_fusion)."""
    if unit.stride == 2:
        return out
    if out.shape == x.shape:
        out = out + x
    return unit.module_act(out)


class StridedEESP(nn.Module):
    """Down-sampling block: [avg-pool(x), EESP_stride2(x)] + reinforcement from the image.

    (B, c_in, H, W) and an image pyramid -> (B, c_out, H / 2, W / 2).
    """

    def __init__(self, c_in: int, c_out: int, receptive_limit: int) -> None:
        super().__init__()
        self.eesp = EESP(c_in, c_out - c_in, 2, _BRANCHES, receptive_limit)
        self.inp_reinf = nn.Sequential(ConvBNPReLU(3, 3, 3), ConvBN(3, c_out, 1))
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor, image_at_scale: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 3, 2, 1)
        out = torch.cat([pooled, self.eesp(x)], 1)
        return self.act(out + self.inp_reinf(image_at_scale))


class ESPNetv2Encoder(nn.Module):
    """The ImageNet encoder's levels 1-4 (level 5 and the classifier are not used)."""

    def __init__(self, width: float) -> None:
        super().__init__()
        if width not in ESPNETV2_CHANNELS:
            raise ValueError(
                f"ESPNetv2 width {width} has no published segmentation weights; "
                f"known: {sorted(ESPNETV2_CHANNELS)}"
            )
        c1, c2, c3, c4 = ESPNETV2_CHANNELS[width]
        r = _RECEPTIVE_LIMITS
        self.level1 = ConvBNPReLU(3, c1, 3, stride=2)
        self.level2_0 = StridedEESP(c1, c2, r[0])
        self.level3_0 = StridedEESP(c2, c3, r[1])
        self.level3 = nn.ModuleList(EESP(c3, c3, 1, _BRANCHES, r[2]) for _ in range(_LEVEL3_UNITS))
        self.level4_0 = StridedEESP(c3, c4, r[2])
        self.level4 = nn.ModuleList(EESP(c4, c4, 1, _BRANCHES, r[3]) for _ in range(_LEVEL4_UNITS))
        self.channels = (c1, c2, c3, c4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> features at strides 2, 4, 8, 16 (H and W multiples of 16)."""
        # The reinforcement branch sees the image average-pooled once per level (3x3, stride
        # 2, zero padding counted): the pyramid is built once instead of per block.
        pyramid = [x]
        for _ in range(4):
            pyramid.append(F.avg_pool2d(pyramid[-1], 3, 2, 1))
        l1 = self.level1(x)
        l2 = self.level2_0(l1, pyramid[2])
        l3 = self.level3_0(l2, pyramid[3])
        for unit in self.level3:
            l3 = unit(l3)
        l4 = self.level4_0(l3, pyramid[4])
        for unit in self.level4:
            l4 = unit(l4)
        return [l1, l2, l3, l4]


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 encoder + bottom-up decoder.

    forward: (B, 3, H, W) ImageNet-normalised float, H and W multiples of 16 ->
    (B, num_classes, H / 2, W / 2) logits (`logit_stride` = 2; the caller resizes them).
    """

    logit_stride = 2

    def __init__(self, width: float = 2.0, num_classes: int = 20) -> None:
        super().__init__()
        self.base_net = ESPNetv2Encoder(width)
        c1, c2, c3, c4 = self.base_net.channels
        base = 16  # decoder width of the Cityscapes and PASCAL releases
        dec = (4 * base, 3 * base, 2 * base)
        proj = min(num_classes // 2, base)
        self.bu_dec_l1 = PyramidContextBlock(c4, proj, dec[0])
        self.bu_dec_l2 = PyramidContextBlock(dec[0], proj, dec[1])
        self.bu_dec_l3 = PyramidContextBlock(dec[1], proj, dec[2])
        self.bu_dec_l4 = PyramidContextBlock(dec[2], proj, num_classes, final=True)
        self.merge_enc_dec_l2 = GatedProjection(c3, dec[0])
        self.merge_enc_dec_l3 = GatedProjection(c2, dec[1])
        self.merge_enc_dec_l4 = GatedProjection(c1, dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))
        self.num_classes = num_classes

    #: The decoder by attribute name: its first block, then per step (encoder projection,
    #: norm after its sum with the upsampled map, block). The forward runs these, and
    #: lam.source_fusion folds each step's norm into the block before it.
    decoder_first = "bu_dec_l1"
    decoder_steps = (
        ("merge_enc_dec_l2", "bu_br_l2", "bu_dec_l2"),
        ("merge_enc_dec_l3", "bu_br_l3", "bu_dec_l3"),
        ("merge_enc_dec_l4", "bu_br_l4", "bu_dec_l4"),
    )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(f"ESPNetv2 needs sides that are multiples of 16, got {tuple(x.shape)}")
        l1, l2, l3, l4 = self.base_net(x)
        y = getattr(self, self.decoder_first)(l4)
        for (skip, norm, block), feat in zip(self.decoder_steps, (l3, l2, l1)):
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=True)
            y = getattr(self, block)(getattr(self, norm)(y + getattr(self, skip)(feat)))
        return y
