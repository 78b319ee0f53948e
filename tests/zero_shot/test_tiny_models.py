"""Self-check of the tiny offline zero-shot models in tests/zero_shot/tiny_models.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.zero_shot.tiny_models import (
    GDINO_MAX_TEXT_LEN,
    GDINO_NUM_QUERIES,
    save_tiny_clip,
    save_tiny_grounding_dino,
    save_tiny_hf_sam,
    save_tiny_owlv2,
    tiny_segment_anything_sam,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H, W = 48, 64


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, (H, W, 3), dtype=np.uint8)


def test_tiny_clip(tmp_path, image):
    from transformers import CLIPModel, CLIPProcessor

    path = save_tiny_clip(tmp_path / "clip")
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(path, local_files_only=True)

    tok = proc.tokenizer(["a photo of a car.", "road"], padding=True, return_tensors="pt")
    assert tok.input_ids[0, 0].item() == proc.tokenizer.bos_token_id
    with torch.no_grad():
        text = model.get_text_features(**tok).pooler_output
        px = proc(images=[image], return_tensors="pt").pixel_values
        img = model.get_image_features(pixel_values=px).pooler_output
        vis = model.vision_model(
            torch.rand(1, 3, 40, 56), output_hidden_states=True, interpolate_pos_encoding=True
        )
    assert text.shape == (2, 16)
    assert px.shape == (1, 3, 32, 32)
    assert img.shape == (1, 16)
    assert vis.last_hidden_state.shape == (1, 1 + 5 * 7, 32)
    assert len(vis.hidden_states) == 3 and vis.hidden_states[-1].shape == (1, 36, 32)


def test_tiny_owlv2(tmp_path, image):
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    path = save_tiny_owlv2(tmp_path / "owlv2")
    model = Owlv2ForObjectDetection.from_pretrained(path, local_files_only=True).eval()
    proc = Owlv2Processor.from_pretrained(path, local_files_only=True)

    inputs = proc(text=[["a car", "a road"]], images=image, return_tensors="pt")
    assert inputs.pixel_values.shape == (1, 3, 64, 64)
    with torch.no_grad():
        out = model(**inputs)
    assert inputs.input_ids.shape == (2, 77)
    assert out.logits.shape == (1, 16, 2)
    assert out.pred_boxes.shape == (1, 16, 4)
    res = proc.post_process_grounded_object_detection(out, threshold=0.0, target_sizes=[(H, W)])
    assert res[0]["boxes"].shape == (16, 4)


def test_tiny_grounding_dino(tmp_path, image):
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    path = save_tiny_grounding_dino(tmp_path / "gdino")
    model = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True).eval()
    proc = GroundingDinoProcessor.from_pretrained(path, local_files_only=True)

    inputs = proc(images=image, text="car. road.", return_tensors="pt")
    assert proc.tokenizer.convert_ids_to_tokens(inputs.input_ids[0]) == [
        "[CLS]",
        "car",
        ".",
        "road",
        ".",
        "[SEP]",
    ]
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, GDINO_NUM_QUERIES, GDINO_MAX_TEXT_LEN)
    assert out.pred_boxes.shape == (1, GDINO_NUM_QUERIES, 4)
    res = proc.post_process_grounded_object_detection(
        out, inputs.input_ids, threshold=0.0, text_threshold=0.0, target_sizes=[(H, W)]
    )
    assert res[0]["boxes"].shape == (GDINO_NUM_QUERIES, 4)
    assert len(res[0]["text_labels"]) == GDINO_NUM_QUERIES


def test_tiny_hf_sam(tmp_path, image):
    from transformers import SamModel, SamProcessor

    path = save_tiny_hf_sam(tmp_path / "sam")
    model = SamModel.from_pretrained(path, local_files_only=True).eval()
    proc = SamProcessor.from_pretrained(path, local_files_only=True)

    inputs = proc(
        images=image,
        input_boxes=[[[5, 5, 40, 30]]],
        input_points=[[[[10, 10], [20, 15], [30, 20]]]],
        input_labels=[[[1, 1, 0]]],
        return_tensors="pt",
    )
    assert inputs["input_boxes"].shape == (1, 1, 4)
    assert inputs["input_points"].shape == (1, 1, 3, 2)
    with torch.no_grad():
        out = model(**inputs, multimask_output=False)
    assert out.pred_masks.shape == (1, 1, 1, 16, 16)
    masks = proc.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    assert masks[0].shape == (1, 1, H, W) and masks[0].dtype == torch.bool


def test_tiny_segment_anything_sam(image):
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    sam = tiny_segment_anything_sam()
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(
        point_coords=np.array([[10, 10], [20, 15]]),
        point_labels=np.array([1, 1]),
        box=np.array([5, 5, 40, 30]),
        multimask_output=False,
    )
    assert masks.shape == (1, H, W) and masks.dtype == bool
    assert scores.shape == (1,) and logits.shape == (1, 16, 16)
    anns = SamAutomaticMaskGenerator(sam, points_per_side=4).generate(image)
    assert isinstance(anns, list)
    assert all(a["segmentation"].shape == (H, W) for a in anns)
