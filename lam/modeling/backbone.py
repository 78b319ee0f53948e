"""Frozen image encoders that return multi-scale dense features.

Every backbone takes (B, 3, H, W) uint8 RGB in [0, 255] and returns a list of taps,
tap i being (B, channels[i], ceil(H / strides[i]), ceil(W / strides[i])) float32. The
normalisation each backbone was trained with lives inside it, so callers never need to know it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Backbone(nn.Module):
    """Base class: holds the input normalisation and declares the taps' channels and strides."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def __init__(self, mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1)
        # Normalisation in 0..255 units: x_norm = (x - mean) / std.
        self.register_buffer("pixel_mean", m.clone(), persistent=False)
        self.register_buffer("pixel_std", s.clone(), persistent=False)

    #: set by `inference_backbone` once the normalisation is folded into the first conv
    normalization_folded: bool = False

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 or float in [0, 255] -> normalised float32."""
        if self.normalization_folded:  # the first conv pads and converts the raw pixels
            return images
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(self.normalize(images))


class EfficientNetBackbone(Backbone):
    """A timm EfficientNet/MobileNet-family model tapped at the end of chosen block stages.

    Taps are block stages (the output of `blocks[i]`) plus, optionally, the 1x1 `conv_head`
    (1280 channels for Lite0): the head's ImageNet-trained features carry most of the semantics,
    while the early stages carry the spatial detail a segmenter needs.
    """

    def __init__(
        self,
        model: nn.Module,
        tap_blocks: tuple[int, ...] = (1, 2, 4, 6),
        include_head: bool = True,
        mean: float = 127.0,
        std: float = 128.0,
    ) -> None:
        super().__init__(mean, std)
        for attr in ("conv_stem", "bn1", "blocks"):
            if not hasattr(model, attr):
                raise ValueError(f"{type(model).__name__} is not an EfficientNet-style timm model")
        n_blocks = len(model.blocks)
        bad = [i for i in tap_blocks if not 0 <= i < n_blocks]
        if bad:
            raise ValueError(f"tap blocks {bad} outside 0..{n_blocks - 1}")
        self.stem = nn.Sequential(model.conv_stem, model.bn1)
        self.blocks = nn.ModuleList(model.blocks[: max(tap_blocks) + 1])
        self.tap_blocks = tuple(sorted(tap_blocks))
        self.head = (
            nn.Sequential(model.conv_head, model.bn2)
            if include_head and max(tap_blocks) == n_blocks - 1
            else None
        )
        chans, strides = [], []
        info = {
            int(f["module"].split(".")[1]): f
            for f in model.feature_info
            if "blocks." in f["module"]
        }
        for i in self.tap_blocks:
            chans.append(_block_channels(model.blocks[i]))
            strides.append(int(info[i]["reduction"]) if i in info else _block_stride(model, i))
        if self.head is not None:
            chans.append(int(model.conv_head.out_channels))
            strides.append(strides[-1])
        self.channels, self.strides = tuple(chans), tuple(strides)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.tap_blocks:
                taps.append(x)
        if self.head is not None:
            taps.append(self.head(x))
        return taps


class TimmFeaturesBackbone(Backbone):
    """Any timm model with `features_only=True` (CNNs and hierarchical ViTs alike)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(mean, std)
        if not hasattr(model, "feature_info"):
            raise ValueError(f"{type(model).__name__} was not created with features_only=True")
        self.model = model
        self.channels = tuple(int(c) for c in model.feature_info.channels())
        self.strides = tuple(int(r) for r in model.feature_info.reduction())

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        # Some timm models (e.g. hierarchical ViTs) return NHWC; taps are always NCHW here.
        return [
            f if f.shape[1] == c else f.permute(0, 3, 1, 2) for f, c in zip(feats, self.channels)
        ]


class TransformersViTBackbone(Backbone):
    """A transformers vision encoder (ViT, DINOv2, ...) whose patch tokens form a dense grid.

    Taps are the hidden states of chosen layers, reshaped to (B, D, H/p, W/p); the CLS and
    register tokens are dropped. Input sides are padded up to a multiple of the patch size p.
    """

    def __init__(
        self,
        model: nn.Module,
        patch_size: int,
        hidden_size: int,
        layers: tuple[int, ...],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__(mean, std)
        self.model = model
        self.patch_size = int(patch_size)
        self.layers = tuple(layers)
        self.channels = tuple(int(hidden_size) for _ in layers)
        self.strides = tuple(self.patch_size for _ in layers)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.patch_size
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        kwargs = {"output_hidden_states": True}
        try:
            out = self.model(pixel_values=x, interpolate_pos_encoding=True, **kwargs)
        except TypeError:  # models without position interpolation (e.g. DINOv2 interpolates always)
            out = self.model(pixel_values=x, **kwargs)
        taps = []
        for layer in self.layers:
            tokens = out.hidden_states[layer]
            patches = tokens[:, -gh * gw :, :]  # drop CLS / register tokens at the front
            taps.append(patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw))
        return taps


def _block_channels(block: nn.Module) -> int:
    last = list(block.children())[-1]
    for name in ("conv_pwl", "conv_pw", "conv"):
        conv = getattr(last, name, None)
        if isinstance(conv, nn.Conv2d):
            return int(conv.out_channels)
    convs = [m for m in last.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _block_stride(model: nn.Module, index: int) -> int:
    stride = 2  # conv_stem
    for block in model.blocks[: index + 1]:
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.stride[0] > 1:
                stride *= m.stride[0]
    return stride


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
        if clamp is not None and x.device.type == "cpu" and _POINTWISE_CONV is not None:
            bias = self.bias if self.bias is not None else None
            attr, scalars = ("relu", []) if clamp[1] == float("inf") else ("hardtanh", list(clamp))
            return _POINTWISE_CONV(
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


def _pointwise_conv_op():  # noqa: ANN202
    """oneDNN conv + activation in one pass (the op torch.compile's CPU backend emits)."""
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


_POINTWISE_CONV = _pointwise_conv_op()


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
    up to float rounding). Other backbones are returned as a plain eval-mode copy. The original
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
    return fast
