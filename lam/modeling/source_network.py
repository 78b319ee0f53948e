"""A pretrained segmentation network used as LAM's backbone: its class logits are the taps.

A network trained on another dataset's taxonomy (Cityscapes' 19 street classes, PASCAL VOC's
20 objects) already separates road from sidewalk and pole from sign; its logits are a far
better representation of a street frame than ImageNet features, and a class map carries them
onto the fleet's taxonomy (`lam.modeling.class_map`). The network never trains here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lam.modeling.backbone import Backbone
from lam.source_taxonomies import CITYSCAPES_CLASSES as CITYSCAPES_TRAIN_IDS
from lam.source_taxonomies import PASCAL_VOC_CLASSES

# Source taxonomies, in output-channel order: the EdgeNets Cityscapes networks add a 20th
# 'background' channel after the 19 trainIds (never mapped by name: it is no street class).
CITYSCAPES_CLASSES: tuple[str, ...] = (*CITYSCAPES_TRAIN_IDS, "background")
SOURCE_TAXONOMIES: dict[str, tuple[str, ...]] = {
    "cityscapes": CITYSCAPES_CLASSES,
    "pascal_voc": PASCAL_VOC_CLASSES,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SourceNetworkBackbone(Backbone):
    """Frames -> the source network's class logits on its own grid.

    forward: (B, 3, H, W) uint8 RGB in [0, 255] -> [(B, S, h, w) float32 logits], where the
    frame is first resized to `input_size` (the size the network works best at: Cityscapes
    networks expect 2:1 street scenes, and CamVid's 4:3 frames stretched to 768x384 score
    4 points above 1024x512 and 11 above their native aspect) and (h, w) = input_size /
    network.logit_stride. The single tap is on the network's grid, not the frame's: callers
    resize it to their output grid, as they do every tap.
    """

    def __init__(
        self,
        network: nn.Module,
        source_classes: tuple[str, ...],
        taxonomy: str,
        input_size: tuple[int, int] = (384, 768),
    ) -> None:
        super().__init__(
            tuple(255 * m for m in IMAGENET_MEAN), tuple(255 * s for s in IMAGENET_STD)
        )
        if len(input_size) != 2 or any(int(s) <= 0 or int(s) % 16 for s in input_size):
            raise ValueError(
                f"input_size must be (height, width) multiples of 16, got {input_size}"
            )
        self.network = network.eval()
        self.source_classes = tuple(source_classes)
        self.taxonomy = taxonomy
        self.input_size = (int(input_size[0]), int(input_size[1]))
        stride = int(getattr(network, "logit_stride", 1))
        self.channels = (len(self.source_classes),)
        self.strides = (stride,)
        self.provenance: dict[str, str] = {}  # weights file, sha256, url, path, licence

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # Resized as float: torch's uint8 kernel is 3x faster (2.5 against 7 ms a 360x480
        # frame on 2 cores), but its rounding to whole grey levels cost 1.35 mIoU on the
        # 0001TP fold's zero-seed model (bicyclist 46.6 -> 39.9).
        x = images.float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        # normalise after the resize, in one pass: (x - mean) / std = x * (1 / std) - mean / std
        scale = 1.0 / self.pixel_std
        x = torch.addcmul(-self.pixel_mean * scale, x, scale)
        logits = self.network(x)
        if logits.shape[1] != len(self.source_classes):
            raise ValueError(
                f"network gave {logits.shape[1]} channels for {len(self.source_classes)} classes"
            )
        return [logits]
