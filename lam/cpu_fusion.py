"""Inference-only rewrites of a frozen backbone that compute the same taps faster on CPU.

BatchNorm folded into the conv before it, timm's dynamic 'SAME' padding replaced by a cheaper
pad, ReLU/ReLU6 fused into the conv (one oneDNN pass), the input normalisation folded into the
stem conv. All exact up to float rounding; the trained module is never changed (a copy is).
Kept apart from lam/modeling/backbone.py, which holds only the modules themselves.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from lam.modeling.backbone import Backbone, EfficientNetBackbone
from lam.modeling.source_network import SourceNetworkBackbone
from lam.source_fusion import fold_decoder_norms, fold_eesp_norms, fuse_pyramid_blocks


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) in place: exact for a BatchNorm in eval mode (running statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    weight = conv.weight.detach() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    conv.bias = nn.Parameter(bias.contiguous(), requires_grad=False)


def _bn_tail(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a (timm BatchNormAct2d or plain) BatchNorm once folded into its conv."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    rest = [m for m in rest if not isinstance(m, nn.Identity)]
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest) if rest else nn.Identity()


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d among a module's children.

    Works on timm EfficientNet-style blocks (conv_stem/bn1, conv_dw/bn1, conv_pw/bn2, ...) and
    Sequentials, where children are registered in the order they run. Only valid in eval mode;
    returns how many pairs were folded. Mutates `module` in place.
    """
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for prev, name in zip(names, names[1:]):
            conv, bn = parent._modules[prev], parent._modules[name]
            if (
                isinstance(conv, nn.Conv2d)
                and type(bn) in _FOLDABLE_BN
                and bn.track_running_stats
                and bn.affine
                and bn.num_features == conv.out_channels
            ):
                _fold_bn(conv, bn)
                parent._modules[name] = _bn_tail(bn)
                folded += 1
    return folded


def _foldable_bn_types() -> tuple[type, ...]:
    types: list[type] = [nn.BatchNorm2d]
    try:
        from timm.layers import BatchNormAct2d

        types.append(BatchNormAct2d)
    except ImportError:  # pragma: no cover - timm is a dependency of every EfficientNet here
        pass
    return tuple(types)


_FOLDABLE_BN = _foldable_bn_types()


class SamePadConv2d(nn.Conv2d):
    """TF 'SAME' convolution (timm's Conv2dSame) with a cheaper pad and a settable pad value.

    Same result as F.pad + conv: the padded input is allocated once in the input's memory
    format, the frame copied in and only the border strips filled (F.pad fills everything
    first, which costs a full extra pass). `pad_value` lets the input normalisation be folded
    into the first convolution: padding raw pixels with the mean equals padding zeros after
    (that first conv then also takes the raw uint8 frame and converts it while padding).
    """

    pad_value: float = 0.0
    #: False: plain conv with its own symmetric `padding` (no separate pad)
    same: bool = True
    #: (min, max) of a ReLU/ReLU6 run fused into the conv (oneDNN post-op on CPU), or None
    clamp: tuple[float, float] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, pad_value: float = 0.0) -> SamePadConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.pad_value = float(pad_value)
        if type(conv) is nn.Conv2d:  # statically padded already: keep its padding
            new.same = False
            new.padding = conv.padding
        return new

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        def same(size: int, k: int, s: int, d: int) -> int:
            return max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)

        ph = same(h, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same(w, self.kernel_size[1], self.stride[1], self.dilation[1])
        return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same:
            return self._conv(x, self.padding)
        b, c, h, w = x.shape
        top, bottom, left, right = self._pads(h, w)
        if top or bottom or left or right:
            nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            # Work on an NHWC view when the input is channels-last: the copy is then a plain
            # strided row copy (indexing the NCHW view of a channels-last tensor is ~2x slower).
            shape = (b, h + top + bottom, w + left + right, c) if nhwc else None
            out = torch.empty(
                shape or (b, c, h + top + bottom, w + left + right),
                dtype=self.weight.dtype,
                device=x.device,
            )
            src = x.permute(0, 2, 3, 1) if nhwc else x
            rows = out if nhwc else out.permute(0, 2, 3, 1)  # (b, H, W, c) view either way
            rows_src = src if nhwc else src.permute(0, 2, 3, 1)
            rows[:, top : top + h, left : left + w] = rows_src
            v = self.pad_value
            if top:
                rows[:, :top].fill_(v)
            if bottom:
                rows[:, top + h :].fill_(v)
            if left:
                rows[:, top : top + h, :left].fill_(v)
            if right:
                rows[:, top : top + h, left + w :].fill_(v)
            x = out.permute(0, 3, 1, 2) if nhwc else out
        elif x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        return self._conv(x, (0, 0))

    def _conv(self, x: torch.Tensor, padding: tuple[int, ...]) -> torch.Tensor:
        clamp = self.clamp
        fused = _pointwise_conv_op() if clamp is not None and x.device.type == "cpu" else None
        if clamp is not None and fused is not None:
            bias = self.bias if self.bias is not None else None
            attr, scalars = ("relu", []) if clamp[1] == float("inf") else ("hardtanh", list(clamp))
            return fused(
                x,
                self.weight,
                bias,
                list(padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
                attr,
                scalars,
                "",
            )
        y = F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return y if clamp is None else y.clamp_(clamp[0], clamp[1])


@functools.cache
def _pointwise_conv_op():  # noqa: ANN202
    """oneDNN conv + activation in one pass (the op torch.compile's CPU backend emits), or None
    where this torch build lacks it or it disagrees with conv2d + clamp. Probed on first use,
    not at import: importing the library must stay cheap."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        if not torch.backends.mkldnn.is_available():
            return None
        x, w, b = torch.ones(1, 2, 4, 4), torch.ones(2, 1, 3, 3), torch.zeros(2)
        want = F.conv2d(x, w, b, 1, 1, 1, 2).clamp(0.0, 6.0)
        got = op(x, w, b, [1, 1], [1, 1], [1, 1], 2, "hardtanh", [0.0, 6.0], "")
        return op if torch.equal(want, got) else None
    except (AttributeError, RuntimeError):  # pragma: no cover - build without oneDNN
        return None


def _replace_convs(module: nn.Module) -> int:
    """Swap timm's dynamic-pad Conv2dSame (and plain convs) for SamePadConv2d in `module`,
    fusing a ReLU/ReLU6 that directly follows a conv into it."""
    from timm.layers import Conv2dSame

    swapped = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            child = parent._modules[name]
            if type(child) not in (nn.Conv2d, Conv2dSame) or child.padding_mode != "zeros":
                continue
            if isinstance(child.padding, str):
                continue
            new = parent._modules[name] = SamePadConv2d.from_conv(child)
            swapped += 1
            nxt = parent._modules[names[i + 1]] if i + 1 < len(names) else None
            if type(nxt) is nn.ReLU6:
                new.clamp = (0.0, 6.0)
            elif type(nxt) is nn.ReLU:
                new.clamp = (0.0, float("inf"))
            if new.clamp is not None:
                parent._modules[names[i + 1]] = nn.Identity()
    return swapped


def _fold_normalization(backbone: EfficientNetBackbone) -> bool:
    """Fold (x - mean) / std into the stem conv when the mean is one value for all channels."""
    conv = backbone.stem[0]
    mean, std = backbone.pixel_mean.reshape(-1), backbone.pixel_std.reshape(-1)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or bool((mean != mean[0]).any()):
        return False
    if not isinstance(conv, SamePadConv2d) or not conv.same:
        return False
    weight = conv.weight.detach() / std.reshape(1, -1, 1, 1)
    bias = -(weight * mean.reshape(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    if conv.bias is not None:
        bias = bias + conv.bias.detach()
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)
    conv.pad_value = float(mean[0])
    backbone.normalization_folded = True
    return True


def inference_backbone(backbone: Backbone) -> Backbone:
    """An eval-only copy of `backbone` that computes the same taps faster on CPU.

    EfficientNet backbones get every BatchNorm folded into the convolution before it, timm's
    dynamic 'SAME' padding replaced by a cheaper pad, ReLU6 fused into the conv before it
    (one oneDNN pass on CPU), and the input normalisation folded into the stem conv (all exact
    up to float rounding). Source networks (ESPNetv2, DiCENet) get their BatchNorms folded
    and their decoder's pyramid blocks rewritten without the channel shuffle
    (lam.source_fusion).
    Other backbones are returned as a plain eval-mode copy. The original
    module (and its state dict) is left untouched.
    """
    import copy

    fast = copy.deepcopy(backbone).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if isinstance(fast, EfficientNetBackbone):
        with torch.no_grad():
            fold_batchnorm(fast)
            _replace_convs(fast)
            _fold_normalization(fast)
    elif isinstance(fast, SourceNetworkBackbone):
        with torch.no_grad():  # ESPNetv2's conv -> BN pairs (its BN -> PReLU pairs stay)
            fold_batchnorm(fast)
            fold_decoder_norms(fast.network)
            fuse_pyramid_blocks(fast)
            if all(p.device.type == "cpu" for p in fast.parameters()):
                fold_eesp_norms(fast)  # float32 only (its scale ratios reach 1e11)
    return fast
