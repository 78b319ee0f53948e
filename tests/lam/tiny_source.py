"""A tiny class-map annotator for tests: a randomly initialised ESPNetv2 s = 1.0 on a 64x96
input (no weight file needed), and three target classes mapped from Cityscapes' by name."""

from __future__ import annotations

from typing import Any

import torch

from lam.modeling.espnetv2 import ESPNetv2Segmentation
from lam.modeling.source_network import CITYSCAPES_CLASSES, SourceNetworkBackbone
from lam.settings import LamConfig

TINY_CLASSES = {"ignore_index": 255, "classes": [
    {"id": 0, "name": "sky", "color": [0, 0, 255]},
    {"id": 1, "name": "road", "color": [128, 64, 128]},
    {"id": 2, "name": "car", "color": [255, 0, 0]},
]}  # fmt: skip


def tiny_source_backbone() -> SourceNetworkBackbone:
    """The same weights on every call (seeded): what the registry would rebuild."""
    torch.manual_seed(0)
    net = ESPNetv2Segmentation(1.0, 20).eval()
    return SourceNetworkBackbone(net, CITYSCAPES_CLASSES, "cityscapes", (64, 96))


def tiny_source_config(**overrides: Any) -> LamConfig:
    """The class map model's config (sky, road, car by name; no OptOU; stride 2)."""
    fields: dict[str, Any] = {
        "classes": TINY_CLASSES,
        "backbone": "espnetv2_city",
        "source_mapping": {"sky": "sky", "road": "road", "car": "car"},
        "optou_steps": 0,
        "out_stride": 2,
    }
    return LamConfig(**{**fields, **overrides})
