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
