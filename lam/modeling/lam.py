"""The Label Anything Model: frozen backbone -> Semantic Class Adapter -> honest OptOU."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lam.modeling.adapter import SemanticClassAdapter
from lam.modeling.backbone import Backbone
from lam.modeling.class_map import ClassMapAdapter
from lam.modeling.optou import OptOU


class PrototypeHead(nn.Module):
    """Soft assignment of pixels to class prototypes averaged over the seed frames.

    Prototypes are per-tap unit vectors, stored as buffers (set by training, saved with the
    model). Cosine similarity over the concatenation of unit-normalised taps equals the mean of
    per-tap cosine similarities, so it is computed per tap at native resolution and resized.
    Output: (B, C, h, w) probabilities = softmax(similarity / temperature).
    """

    def __init__(self, channels: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        for i, c in enumerate(channels):
            self.register_buffer(f"proto_{i}", torch.zeros(num_classes, c))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))
        self.log_temperature = nn.Parameter(torch.tensor(-2.3))  # temperature ~0.1
        self.n_taps = len(channels)

    def prototypes(self, i: int) -> torch.Tensor:
        return getattr(self, f"proto_{i}")

    @torch.no_grad()
    def set_prototypes(self, per_tap: list[torch.Tensor], valid: torch.Tensor) -> None:
        """per_tap[i]: (C, channels[i]) class means of normalised features; valid: (C,) bool."""
        for i, p in enumerate(per_tap):
            self.prototypes(i).copy_(F.normalize(p, dim=1))
        self.valid.copy_(valid)

    def forward(self, taps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        sim = None
        for i, feat in enumerate(taps):
            s = torch.einsum("bdhw,cd->bchw", F.normalize(feat, dim=1), self.prototypes(i))
            if s.shape[-2:] != size:
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            sim = s if sim is None else sim + s
        if sim is None:
            raise ValueError("prototype head needs at least one tap")
        sim = sim / self.n_taps
        # Classes never seen in a seed get no prototype; keep them out of the assignment.
        sim = sim.masked_fill(~self.valid.view(1, -1, 1, 1), -1e4)
        return torch.softmax(sim / self.log_temperature.exp(), dim=1)


def block_mean_rgb(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB -> (B, 3, h, w) float32 means over the (H/h, W/w) blocks.

    Why not `F.avg_pool2d(images.float(), ...)`: that writes a full-resolution float copy of
    every frame first (and frames arrive as a channels-last view of (B, H, W, 3) arrays).
    Here the block rows are summed as small integers straight from the interleaved uint8
    pixels, then the block columns, and only the (h, w) result becomes float: ~4x faster on
    CPU, and exactly the same means (integer sums, one division). Sizes that do not divide,
    and frames that are not uint8, fall back to adaptive average pooling.
    """
    b, _, big_h, big_w = images.shape
    h, w = size
    if images.dtype != torch.uint8 or big_h % h or big_w % w:
        return F.adaptive_avg_pool2d(images.float(), size)
    sy, sx = big_h // h, big_w // w
    acc_dtype = torch.int16 if 255 * sy * sx <= torch.iinfo(torch.int16).max else torch.int32
    # (B*h, sy, W*3): the sy pixel rows of each block row, pixels interleaved as RGBRGB...
    rows = images.permute(0, 2, 3, 1).contiguous().view(b * h, sy, big_w * 3)
    acc = rows[:, 0].to(acc_dtype)
    for i in range(1, sy):
        acc += rows[:, i]
    cols = acc.view(b * h, w, sx, 3)
    total = cols[:, :, 0].clone()
    for j in range(1, sx):
        total += cols[:, :, j]
    return total.view(b, h, w, 3).permute(0, 3, 1, 2).float().div_(sy * sx)


def colour_guide(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB -> (B, 3, h, w) float guidance for affinities.

    Area-downsampled colour in [0, 1] plus a brightness-invariant chroma term, so shadows on the
    road weigh less than a change of material.
    """
    x = block_mean_rgb(images, size).div_(255.0).contiguous()
    intensity = x.mean(1, keepdim=True)
    chroma = x / (intensity + 0.05)
    return torch.cat([intensity, 0.3 * chroma[:, :2]], dim=1)


class LabelAnythingModel(nn.Module):
    """Frozen backbone + adapter + prototypes + OptOU.

    forward: (B, 3, H, W) uint8 RGB -> (B, C, ceil(H / out_stride), ceil(W / out_stride)) logits.
    The backbone never trains (it is frozen and run under no_grad); only the adapter, the
    prototype temperature and OptOU's step sizes are learned from seeds.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        out_stride: int = 4,
        adapter: SemanticClassAdapter | ClassMapAdapter | None = None,
        optou: OptOU | None = None,
        use_prototypes: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.num_classes = num_classes
        self.out_stride = out_stride
        self.adapter = adapter or SemanticClassAdapter(backbone.channels, num_classes)
        self.prototype_head = (
            PrototypeHead(backbone.channels, num_classes) if use_prototypes else None
        )
        self.optou = optou or OptOU()
        # state-dict keys of the backbone (without "backbone.") that training set from the
        # target drives' frames (lam.norm_stats): saved with the head, since the registry's
        # backbone does not have them
        self.adapted_backbone_buffers: tuple[str, ...] = ()

    def train(self, mode: bool = True) -> LabelAnythingModel:
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics of the frozen backbone never move
        return self

    def out_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        h, w = image_size
        return (-(-h // self.out_stride), -(-w // self.out_stride))

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen features of a batch: computed once per frame and reusable across heads.

        (B, 3, H, W) uint8 -> list of (B, channels[i], h_i, w_i) float. The input is passed
        channels-last, which runs the depthwise convolutions about 1.5x faster on CPU.
        """
        return [
            t.contiguous()
            for t in self.backbone(images.contiguous(memory_format=torch.channels_last))
        ]

    def head(self, taps: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Trainable part: taps of `images` -> refined logits at the output stride."""
        size = self.out_size(tuple(images.shape[-2:]))
        return self.refine(self.adapter(taps, size), taps, images)

    def refine(
        self, logits: torch.Tensor, taps: list[torch.Tensor], images: torch.Tensor
    ) -> torch.Tensor:
        """OptOU on adapter logits (B, C, h, w) -> refined (B, C, h, w); frames are (B, 3, H, W)."""
        if self.optou.steps == 0:  # no refinement: the guide and prototypes would go unused
            return logits
        size = tuple(logits.shape[-2:])
        protos = self.prototype_head(taps, size) if self.prototype_head is not None else None
        return self.optou(logits, colour_guide(images, size), protos)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extract(images), images)
