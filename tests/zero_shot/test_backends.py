"""The real backend code on tiny random transformers / segment-anything models.

Random weights prove shapes and the library calls; the oracle variants replace a model's
outputs with known ones, so the decoding (boxes, token spans, padding) is checked exactly.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lam.errors import LamflowError
from lam.zero_shot import ZERO_SHOT
from lam.zero_shot.detectors import GroundingDinoDetector, Owlv2Detector, build_detector
from lam.zero_shot.maskclip import ClipDenseEncoder, build_maskclip
from lam.zero_shot.sam import (
    SegmentAnythingAutoMasks,
    SegmentAnythingMasker,
    TransformersSamMasker,
    build_box_masker,
)
from tests.zero_shot.tiny_models import (
    save_tiny_clip,
    save_tiny_grounding_dino,
    save_tiny_hf_sam,
    save_tiny_lam,
    save_tiny_owlv2,
    tiny_segment_anything_sam,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
H, W = 48, 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "clip": save_tiny_clip(root / "clip"),
        "owlv2": save_tiny_owlv2(root / "owlv2"),
        "gdino": save_tiny_grounding_dino(root / "gdino"),
        "sam": save_tiny_hf_sam(root / "sam"),
        "lam": save_tiny_lam(root / "lam"),
    }


@pytest.fixture()
def image():
    return np.random.RandomState(0).randint(0, 256, (H, W, 3), dtype=np.uint8)


def test_maskclip_dense_features_are_the_value_path(models, image):
    enc = ClipDenseEncoder(models["clip"], short_side=32)
    pixels = enc.pixel_values(image)
    assert tuple(pixels.shape) == (1, 3, 32, 40)  # short side 32, long side rounded to patch 8
    feats = enc.patch_features(image)
    assert tuple(feats.shape) == (4, 5, 16)
    # the last block's input, caught by a hook (independent of hidden_states indexing)
    vision = enc.model.vision_model
    last = vision.encoder.layers[-1]
    seen = {}

    def catch(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]  # None: inputs left as they are

    handle = last.register_forward_pre_hook(catch, with_kwargs=True)
    with torch.no_grad():
        usual = vision(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        handle.remove()
        x = seen["x"]
        # by hand: value path (no query-key attention) + residual, MLP + residual, then
        # the final LayerNorm and the image-text projection
        a = last.self_attn
        v = x + a.out_proj(a.v_proj(last.layer_norm1(x)))
        v = v + last.mlp(last.layer_norm2(v))
        ref = enc.model.visual_projection(vision.post_layernorm(v))[0, 1:].reshape(4, 5, -1)
        usual = enc.model.visual_projection(vision.post_layernorm(usual))[0, 1:]
    torch.testing.assert_close(feats, ref)
    # and it is not the usual output: attention would mix the patches
    assert not torch.allclose(feats.reshape(20, -1), usual, atol=1e-3)
    text = enc.encode_text(["a photo of a car.", "road"])
    assert tuple(text.shape) == (2, 16) and text.device.type == "cpu"


def test_maskclip_seeder_end_to_end_on_tiny_clip(models, image):
    seeder = build_maskclip(
        ["sky", "road", "car"], 255, clip_dir=str(models["clip"]), short_side=32, min_confidence=0.0
    )
    out = seeder.label_frame(image)
    assert out.label.shape == (H, W) and out.label.max() <= 2
    assert out.confidence.shape == (H, W) and 0 < out.confidence.min() <= out.confidence.max() <= 1
    with pytest.raises(LamflowError, match="needs a CLIP model"):
        build_maskclip(["sky"], 255)
    with pytest.raises(LamflowError, match="holds a 'owlv2' model"):
        build_maskclip(["sky"], 255, clip_dir=str(models["owlv2"]))


def test_owlv2_runs_and_boxes_are_relative_to_the_padded_square(models, image):
    det = build_detector(str(models["owlv2"]), box_threshold=0.0, top_points=2)
    assert isinstance(det, Owlv2Detector)
    found = det.detect(image, ["car", "road"])
    assert found and {d.phrase for d in found} <= {"car", "road"}
    for d in found:
        assert 0 <= d.box[0] <= d.box[2] <= W - 1 and 0 <= d.box[1] <= d.box[3] <= H - 1
    # oracle outputs: patch 3 is a "road" box centred at (0.5, 0.25) of the padded 64x64 square
    logits = torch.full((1, 16, 2), -10.0)
    logits[0, 3, 1] = 10.0
    boxes = torch.zeros(1, 16, 4)
    boxes[0, 3] = torch.tensor([0.5, 0.25, 0.5, 0.25])
    det.model = lambda **_: SimpleNamespace(logits=logits, pred_boxes=boxes)
    det.box_threshold = 0.5
    (road,) = det.detect(image, ["car", "road"])
    assert road.phrase == "road" and road.score == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(
        road.box, [16, 8, 48, 24]
    )  # x: 0.25..0.75 of 64; y: 0.125..0.375 of 64
    np.testing.assert_allclose(road.points, [[32, 16]])


def test_grounding_dino_token_spans_and_decoding(models, image):
    det = build_detector(str(models["gdino"]), box_threshold=0.3, text_threshold=0.25)
    assert isinstance(det, GroundingDinoDetector)
    owner, ids = det.token_phrases("car. road.", ["car", "road"])
    assert owner == [-1, 0, -1, 1, -1, -1]  # [CLS] car . road . [SEP]
    det.detect(image, ["car", "road"])  # the real forward runs
    n_query, n_text = 20, 32
    logits = torch.full((1, n_query, n_text), -10.0)
    logits[0, 7, 3] = 5.0  # query 7 says "road" (token 3)
    logits[0, 2, 2] = 5.0  # query 2 fires on the "." token only: no phrase, no detection
    boxes = torch.zeros(1, n_query, 4)
    boxes[0, 7] = torch.tensor([0.5, 0.5, 0.5, 1.0])
    det.model = lambda **_: SimpleNamespace(logits=logits, pred_boxes=boxes)
    (road,) = det.detect(image, ["car", "road"])
    assert road.phrase == "road"
    np.testing.assert_allclose(road.box, [16, 0, 48, H - 1])  # normalised to the frame itself


def test_sam_maskers_return_frame_sized_masks(models, image):
    boxes = [np.array([4, 4, 30, 30], np.float32), np.array([10, 20, 60, 44], np.float32)]
    points = [np.array([[10, 10], [20, 20]], np.float32), np.array([[30, 30]], np.float32)]
    hf = build_box_masker(str(models["sam"]))
    assert isinstance(hf, TransformersSamMasker)
    out = hf.masks(image, boxes, points)
    assert [m.shape for m, _ in out] == [(H, W), (H, W)] and all(m.dtype == bool for m, _ in out)
    sa = SegmentAnythingMasker(tiny_segment_anything_sam())
    out = sa.masks(image, boxes, points)
    assert [m.shape for m, _ in out] == [(H, W), (H, W)]
    assert sa.masks(image, [], []) == []
    auto = SegmentAnythingAutoMasks(tiny_segment_anything_sam(), points_per_side=4)
    assert all(m.shape == (H, W) for m in auto.generate(image))


def test_missing_or_wrong_models_fail_in_one_line(models, tmp_path):
    with pytest.raises(LamflowError, match="SAM checkpoint not found"):
        build_box_masker(str(tmp_path / "sam_vit_b.pth"))
    with pytest.raises(LamflowError, match="expected model_type 'grounding-dino' or 'owlv2'"):
        build_detector(str(models["clip"]))


def test_transformers_sam_gets_the_boxes_and_only_real_points(models, image):
    masker = TransformersSamMasker(models["sam"])
    real, seen = masker.model, {}

    def spy(**kwargs):
        seen.clear()
        seen.update(kwargs)
        return real(**kwargs)

    masker.model = spy
    boxes = [np.array([4, 4, 30, 30], np.float32), np.array([10, 20, 60, 44], np.float32)]
    masker.masks(image, boxes, [np.array([[10, 10], [20, 20]]), np.array([[30, 30]])])
    # the frame's long side is the model's 64: coordinates reach SAM unscaled
    assert seen["input_boxes"][0].tolist() == [[4, 4, 30, 30], [10, 20, 60, 44]]
    assert seen["input_points"][0, 0].tolist() == [[[10, 10], [20, 20]]][0]
    assert seen["input_labels"][0].tolist() == [[1, 1], [1, -10]]  # -10: padding, not a click
    masker.masks(image, boxes, [np.zeros((0, 2)), np.zeros((0, 2))])
    assert "input_points" not in seen and "input_labels" not in seen  # boxes alone


def test_grounding_dino_splits_long_phrase_lists_into_captions(models, image):
    det = build_detector(str(models["gdino"]), box_threshold=0.0, text_threshold=0.0)
    words = ["car", "road", "tree", "sky", "person", "pavement", "sidewalk", "a"] * 3
    groups = det.captions(words)
    limit = det.max_text_len
    assert len(groups) > 1 and [i for g in groups for i in g] == list(range(len(words)))
    for g in groups:
        caption = " ".join(f"{words[k]}." for k in g)
        assert len(det.processor.tokenizer(caption)["input_ids"]) <= limit
    found = det.detect(image, words)  # one forward per caption, one merged selection
    assert found and {d.phrase for d in found} <= set(words)


@pytest.mark.parametrize("backend", sorted(ZERO_SHOT))
def test_every_registered_backend_runs_through_the_real_stage(backend, models, tmp_path):
    """build_seeder -> registry factory -> real (tiny) models -> files: no stub in between."""
    import json

    from PIL import Image

    from lamflow.params import ZeroShotSeedsParams
    from tasks.zero_shot_seeds import zero_shot_seeds

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.RandomState(1)
    for i in range(2):
        Image.fromarray(rng.randint(0, 256, (H, W, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"name": n} for n in ("sky", "road", "car")]}))
    paths = {
        "grounded_sam": {"detector_dir": str(models["owlv2"]), "sam": str(models["sam"])},
        "maskclip": {"clip_dir": str(models["clip"]), "short_side": 32},
        "source_model": {"source_model_dir": str(models["lam"])},
    }[backend]
    params = ZeroShotSeedsParams(
        backend=backend,
        box_threshold=0.0,
        min_confidence=0.0,
        min_labelled_fraction=0.0,
        min_mean_confidence=0.0,
        use_llm=False,
        **paths,
    )
    report = zero_shot_seeds(
        str(frames), str(classes), str(tmp_path / "out"), params, progress=False
    )
    assert report["version"].startswith(backend) and report["used"] == ["f0", "f1"]
    label = np.array(Image.open(tmp_path / "out" / "labels" / "f0.png"))
    assert label.shape == (H, W) and set(np.unique(label)) <= {0, 1, 2, 255}
    record = json.loads((tmp_path / "out" / "records" / "f0.json").read_text())
    assert record["details"]["backend"] == backend
