"""DiCENet: output shape and stride, strict loading, and the published Cityscapes weights on
CamVid (skipped where ../shared/weights is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from lam.errors import LamflowError
from lam.metrics import confusion_matrix, scores_from_confusion
from lam.modeling.dice_layers import DimensionWiseConv, resize_grid
from lam.modeling.dicenet import DiCENetSegmentation, load_dicenet_state
from lam.modeling.state_loading import load_state_strict

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO.parent / "shared" / "weights" / "edgenets" / "dicenet_s_1.75_city_1024x512.pth"
# Cityscapes trainIds 0-18 -> CamVid ids (sky, building, pole, road, sidewalk, tree, sign,
# fence, car, pedestrian, bicyclist = 0..10), the hand map of ../shared/weights/README.md
CITY_TO_CAMVID = np.array([3, 4, 1, 1, 7, 2, 6, 6, 5, 5, 0, 9, 10, 8, 8, 8, 8, 10, 10])


@pytest.fixture(scope="module")
def small_net() -> DiCENetSegmentation:
    torch.manual_seed(0)
    return DiCENetSegmentation(width=0.5, num_classes=5, input_size=(64, 64)).eval()


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (48, 32)])
def test_output_is_num_classes_at_logit_stride(small_net, hw):
    with torch.no_grad():
        out = small_net(torch.randn(2, 3, *hw))
    s = small_net.logit_stride
    assert s == 2
    assert out.shape == (2, 5, hw[0] // s, hw[1] // s)
    assert torch.isfinite(out).all()


def test_forward_rejects_sizes_that_are_not_multiples_of_16(small_net):
    with pytest.raises(ValueError, match="multiples of 16"):
        small_net(torch.randn(1, 3, 72, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        small_net(torch.randn(1, 4, 64, 64))


def test_unknown_width_names_the_known_ones():
    with pytest.raises(ValueError, match=r"1\.75"):
        DiCENetSegmentation(width=1.6)


def test_dice_unit_resamples_rows_and_columns_to_its_built_size():
    # built for 6 x 10; run at 12 x 4: rows are pooled 12 -> 6, columns interpolated 4 -> 10
    unit = DimensionWiseConv(8, 12, height=6, width=10).eval()
    seen: dict[str, tuple[int, ...]] = {}
    unit.conv_height.register_forward_hook(lambda m, i, o: seen.update(h=tuple(i[0].shape)))
    unit.conv_width.register_forward_hook(lambda m, i, o: seen.update(w=tuple(i[0].shape)))
    with torch.no_grad():
        out = unit(torch.randn(2, 8, 12, 4))
    assert out.shape == (2, 12, 12, 4)
    assert seen["h"] == (2, 6, 8, 4)  # (B, rows, C, W)
    assert seen["w"] == (2, 10, 12, 8)  # (B, columns, H, C)


def test_resize_grid_pools_down_and_interpolates_up():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    down = resize_grid(x, (2, 4))
    assert torch.equal(down, F.avg_pool2d(x, (2, 1)))
    up = resize_grid(x, (4, 7))
    assert torch.equal(up[..., ::2], x)  # aligned corners: every other column is an original
    assert resize_grid(x, (4, 4)) is x


def test_strict_loading_names_a_missing_key(small_net):
    state = small_net.state_dict()
    dropped = "eff_pool_16x16.merge_layer.3.weight"
    del state[dropped]
    fresh = DiCENetSegmentation(width=0.5, num_classes=5, input_size=(64, 64))
    with pytest.raises(LamflowError, match=rf"1 missing key\(s\): {dropped}"):
        load_dicenet_state(fresh, state)


def test_strict_loading_names_an_unexpected_key_and_a_wrong_shape(small_net):
    state = dict(small_net.state_dict())
    state["base_net.level5.extra"] = torch.zeros(1)
    state["proj_enc_32x32.wt_layer.1.weight"] = torch.zeros(3, 3, 1, 1)
    fresh = DiCENetSegmentation(width=0.5, num_classes=5, input_size=(64, 64))
    with pytest.raises(LamflowError) as err:
        load_state_strict(fresh, state, "test weights")
    msg = str(err.value)
    assert "1 unexpected key(s): base_net.level5.extra" in msg
    assert "shape mismatch at proj_enc_32x32.wt_layer.1.weight" in msg
    assert "(3, 3, 1, 1)" in msg and "(64, 48, 1, 1)" in msg


def test_strict_loading_copies_every_tensor(small_net):
    fresh = DiCENetSegmentation(width=0.5, num_classes=5, input_size=(64, 64)).eval()
    load_dicenet_state(fresh, small_net.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(fresh(x), small_net(x))


def test_wrong_build_size_says_which_size_the_weights_need(small_net):
    other = DiCENetSegmentation(width=0.5, num_classes=5, input_size=(128, 64))
    with pytest.raises(LamflowError, match=r"conv_height.*input_size=\(224, 224\)"):
        load_dicenet_state(other, small_net.state_dict())


@pytest.mark.skipif(not WEIGHTS.exists(), reason=f"published weights not at {WEIGHTS}")
def test_published_cityscapes_weights_label_camvid_sanely(camvid):
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    model = DiCENetSegmentation(width=1.75, num_classes=20).eval()
    load_dicenet_state(model, torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    names = [c["name"] for c in json.loads((camvid / "classes.json").read_text())["classes"]]
    frames = sorted((camvid / "val" / "images").glob("*.jpg"))[::50][:3]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = [
        np.asarray(Image.open(p).convert("RGB").resize((768, 384), Image.Resampling.BILINEAR))
        for p in frames
    ]
    x = (torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    labels = [np.asarray(Image.open(camvid / "val" / "labels" / f"{p.stem}.png")) for p in frames]
    with torch.inference_mode():
        logits = model(x)
        assert logits.shape == (len(frames), 20, 192, 384)
        logits = F.interpolate(logits[:, :19], size=labels[0].shape, mode="bilinear")
        pred = CITY_TO_CAMVID[logits.argmax(dim=1).numpy()]
    conf = sum(confusion_matrix(p, t, 11, ignore_index=11) for p, t in zip(pred, labels))
    scores = scores_from_confusion(np.asarray(conf), names)
    assert scores.miou > 0.40, scores.as_dict()
    iou = dict(zip(names, scores.iou))
    assert iou["road"] > 0.8 and iou["sky"] > 0.8, scores.as_dict()
