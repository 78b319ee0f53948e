"""Every registered backbone builds and returns taps of the declared channels and strides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lam.build import BACKBONES, SOURCE_NETWORKS, build_backbone
from lam.errors import LamflowError

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "edgenets"


def _tiny_timm_checkpoint(tmp_path: Path) -> dict:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return {"model_name": "resnet18", "checkpoint": str(path), "out_indices": [1, 2, 3]}


def _tiny_transformers_dir(tmp_path: Path, kind: str) -> dict:
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    if kind == "vit":
        model = ViTModel(ViTConfig(image_size=32, patch_size=8, **small), add_pooling_layer=False)
    else:
        model = Dinov2Model(Dinov2Config(image_size=32, patch_size=8, **small))
    path = tmp_path / kind
    model.save_pretrained(path)
    return {"path": str(path), "layers": [1, 3]}


def _options(name: str, tmp_path: Path) -> dict:
    if name == "timm":
        return _tiny_timm_checkpoint(tmp_path)
    if name == "transformers":
        return _tiny_transformers_dir(tmp_path, "vit")
    if name in SOURCE_NETWORKS:
        if not SHARED_WEIGHTS.is_dir():
            pytest.skip("no shared weights (../shared/weights/edgenets)")
        return {"input_size": [64, 128]}
    return {}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_registered_backbone_taps_match_declared_shapes(name: str, tmp_path: Path):
    backbone = build_backbone(name, _options(name, tmp_path)).eval()
    images = torch.randint(0, 256, (2, 3, 72, 96), dtype=torch.uint8)
    with torch.no_grad():
        taps = backbone(images)
    assert len(taps) == len(backbone.channels) == len(backbone.strides)
    # a source network's taps lie on its own input grid (input_size), not the frame's
    h, w = getattr(backbone, "input_size", (72, 96))
    for tap, c, s in zip(taps, backbone.channels, backbone.strides):
        assert tap.shape[:2] == (2, c)
        assert tap.shape[2] == -(-h // s) and tap.shape[3] == -(-w // s)
        assert torch.isfinite(tap).all()


def test_dinov2_directory_with_padding(tmp_path: Path):
    backbone = build_backbone("transformers", _tiny_transformers_dir(tmp_path, "dinov2"))
    with torch.no_grad():
        taps = backbone(torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8))
    assert [t.shape for t in taps] == [torch.Size([1, 32, 7, 9])] * 2


# ImageNet classes a street scene plausibly shows (cab, streetcar, traffic light, ...).
STREET_CLASSES = {
    407,
    436,
    468,
    511,
    569,
    575,
    581,
    627,
    654,
    656,
    661,
    671,
    675,
    705,
    717,
    734,
    751,
    757,
    779,
    817,
    829,
    864,
    867,
    874,
    880,
    919,
    920,
}


def test_efficientnet_lite0_weights_recognise_a_street(camvid: Path):
    """The packaged weights are really ImageNet's: CamVid frames look like street scenes."""
    import numpy as np
    from PIL import Image
    from torch.nn import functional as F

    from lam.weights import load_efficientnet_lite

    model = load_efficientnet_lite("lite0")
    frames = sorted((camvid / "val" / "images").glob("*.jpg"))[:4]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames]))
    x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(224, 224), mode="bilinear")
    with torch.no_grad():
        top5 = model((x - 127.0) / 128.0).topk(5, dim=1).indices
    hits = [bool(set(row.tolist()) & STREET_CLASSES) for row in top5]
    assert sum(hits) >= 3, top5.tolist()


def test_bad_backbone_options_name_the_problem(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_backbone("nope")
    with pytest.raises(LamflowError, match="model_name"):
        build_backbone("timm", {})
    with pytest.raises(LamflowError, match="path"):
        build_backbone("transformers", {})
    with pytest.raises(LamflowError, match="cannot load"):
        build_backbone("transformers", {"path": str(tmp_path / "missing")})
    with pytest.raises(LamflowError, match="bad backbone_options"):
        build_backbone("efficientnet_lite0", {"no_such_option": 1})


@pytest.mark.parametrize("size", [(72, 96), (45, 61), (360, 480)])
def test_inference_backbone_matches_the_timm_forward(size: tuple[int, int]):
    """BatchNorm, ReLU6, 'SAME' padding and normalisation folded: the same taps to ~1e-4."""
    from lam.cpu_fusion import SamePadConv2d, inference_backbone

    backbone = build_backbone("efficientnet_lite0").eval()
    fast = inference_backbone(backbone)
    assert fast.normalization_folded and not backbone.normalization_folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, SamePadConv2d) and m.clamp for m in fast.modules())
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    with torch.inference_mode():
        want = backbone(images)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            got = fast(images.contiguous(memory_format=memory_format))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                scale = w.abs().max().clamp_min(1.0)
                assert float((g - w).abs().max() / scale) < 1e-4
    # The original module is untouched (its state dict still loads into a fresh backbone).
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    build_backbone("efficientnet_lite0").load_state_dict(backbone.state_dict())


@pytest.mark.parametrize(
    ("model_name", "late_key", "wrapped_key"),
    [
        ("resnet18", "layer4.1.conv2.weight", "layer4.1.conv2.weight"),
        ("convnext_atto", "stages.3.blocks.1.conv_dw.weight", "stages_3.blocks.1.conv_dw.weight"),
    ],
)
def test_timm_checkpoints_load_whole_or_fail_naming_keys(
    model_name: str, late_key: str, wrapped_key: str, tmp_path: Path
):
    """timm's feature wrappers rename modules (ConvNeXt `stages.3` -> `stages_3`): a checkpoint
    must still fill the last stage, and a checkpoint that cannot must fail, naming the keys."""
    import timm

    state = timm.create_model(model_name, pretrained=False, num_classes=7).state_dict()
    good = tmp_path / "good.pth"
    torch.save({"state_dict": state}, good)
    backbone = build_backbone("timm", {"model_name": model_name, "checkpoint": str(good)})
    loaded = dict(backbone.named_parameters())
    name = next(n for n in loaded if n.endswith(wrapped_key))
    assert torch.equal(loaded[name], state[late_key])
    stage = late_key.rsplit(".", 3)[0].rsplit(".", 1)[0]  # layer4 / stages.3
    truncated = tmp_path / "truncated.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith(stage)}, truncated)
    with pytest.raises(LamflowError, match=rf"missing key\(s\) \['{stage}"):
        build_backbone("timm", {"model_name": model_name, "checkpoint": str(truncated)})
    other = "convnext_atto" if model_name == "resnet18" else "resnet18"
    with pytest.raises(LamflowError, match=f"does not fit timm '{other}'"):
        build_backbone("timm", {"model_name": other, "checkpoint": str(good)})
    with pytest.raises(LamflowError, match="not found"):
        build_backbone("timm", {"model_name": model_name, "checkpoint": str(tmp_path / "no.pth")})
