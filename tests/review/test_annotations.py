"""annotation_to_label and review_task: the two ends of the review loop, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.formats.labelstudio import (
    annotation_to_label,
    brush_rle_to_mask,
    decode_brush_rle,
    labeling_config,
    review_task,
)
from tests.review.helpers import CLASSES, brush_result, keypoint_result

H, W = 24, 32


def _disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_keypoints_become_discs_around_the_clicked_pixel() -> None:
    result = [keypoint_result(5, 7, "car", H, W), keypoint_result(30, 0, "road", H, W)]
    label = annotation_to_label(result, CLASSES, H, W, point_radius=3)
    expected = np.full((H, W), 255, np.uint8)
    expected[_disc(7, 5, 3)] = 2
    expected[_disc(0, 30, 3)] = 1  # clipped at the image border
    assert label.dtype == np.uint8 and label.shape == (H, W)
    assert (label == expected).all()
    assert int((label == 2).sum()) == 29  # a radius-3 disc: 29 pixels


def test_keypoint_without_original_size_uses_the_frame_size() -> None:
    point = keypoint_result(10, 10, "sky", H, W)
    del point["original_width"], point["original_height"]
    label = annotation_to_label([point], CLASSES, H, W, point_radius=0)
    assert np.argwhere(label == 0).tolist() == [[10, 10]]


def test_brush_and_points_mixed_are_painted_in_order() -> None:
    road = np.zeros((H, W), bool)
    road[12:] = True
    sky = np.zeros((H, W), bool)
    sky[:6] = True
    result = [
        brush_result(road, "road"),
        keypoint_result(16, 18, "car", H, W),  # a click on the road: later wins
        brush_result(sky, "sky"),
        {"type": "choices", "value": {"choices": ["ok"]}},  # other result types are ignored
    ]
    label = annotation_to_label(result, CLASSES, H, W, point_radius=2)
    expected = np.full((H, W), 255, np.uint8)
    expected[road] = 1
    expected[_disc(18, 16, 2)] = 2
    expected[sky] = 0
    assert (label == expected).all()


def test_annotation_of_another_size_is_refused() -> None:
    mask = np.ones((720, 960), bool)
    with pytest.raises(LamflowError, match="annotation is 720x960, frame is 360x480"):
        annotation_to_label([brush_result(mask, "road")], CLASSES, 360, 480)
    with pytest.raises(LamflowError, match="result 0 \\(keypointlabels\\): annotation is 720x960"):
        annotation_to_label([keypoint_result(1, 1, "car", 720, 960)], CLASSES, 360, 480)


@pytest.mark.parametrize(
    "result",
    [[], [{"type": "choices", "value": {}}], "empty-brush"],
    ids=["no-results", "no-brush-or-point", "empty-brush"],
)
def test_empty_annotation_is_refused(result) -> None:
    if result == "empty-brush":
        result = [brush_result(np.zeros((H, W), bool), "road")]
    with pytest.raises(LamflowError, match="annotation paints no pixel"):
        annotation_to_label(result, CLASSES, H, W)


def test_unknown_class_is_named() -> None:
    with pytest.raises(
        LamflowError, match=r"result 1 \(keypointlabels\): keypointlabels \['tram'\]"
    ):
        annotation_to_label(
            [keypoint_result(1, 1, "car", H, W), keypoint_result(2, 2, "tram", H, W)],
            CLASSES,
            H,
            W,
        )
    with pytest.raises(LamflowError, match=r"brushlabels \['bus'\] must name one of"):
        annotation_to_label([brush_result(np.ones((H, W), bool), "bus")], CLASSES, H, W)


def test_review_task_carries_the_frame_and_the_model_mask() -> None:
    label = np.full((H, W), 255, np.uint8)
    label[:8] = 0
    label[16:, 4:20] = 2
    task = review_task(
        "/data/upload/1/ab-f.png",
        "d1_0001",
        "d1",
        "0" * 64,
        label,
        CLASSES,
        "m@3",
        0.8,
        ["low confidence", "rare class"],
    )
    task = json.loads(json.dumps(task))
    assert task["data"] == {
        "image": "/data/upload/1/ab-f.png",
        "frame": "d1_0001",
        "drive": "d1",
        "sha256": "0" * 64,
        "reasons": "low confidence; rare class",
        "priority": 0.8,
    }
    [pred] = task["predictions"]
    assert (pred["model_version"], pred["score"]) == ("m@3", 0.8)
    assert [r["value"]["brushlabels"] for r in pred["result"]] == [["sky"], ["car"]]
    for res in pred["result"]:
        assert (res["original_height"], res["original_width"]) == (H, W)
    assert (annotation_to_label(pred["result"], CLASSES, H, W) == label).all()
    empty = review_task("/x.png", "s", "d", "f" * 64, None, CLASSES, "m@3", 0.1, [])
    assert empty["predictions"][0]["result"] == [] and empty["data"]["reasons"] == ""


def test_review_task_masks_are_0_255_rgba() -> None:
    label = np.full((H, W), 255, np.uint8)
    label[3:9, 2:7] = 2
    task = review_task("/x.png", "s", "d", "f" * 64, label, CLASSES, "m@3", 0.5, ["why"])
    [res] = task["predictions"][0]["result"]
    flat = decode_brush_rle(res["value"]["rle"])
    assert flat.size == H * W * 4 and set(np.unique(flat).tolist()) == {0, 255}
    assert (brush_rle_to_mask(res["value"]["rle"], H, W) == (label == 2)).all()


def test_labeling_config_has_keypoints_with_the_class_colours() -> None:
    xml = labeling_config(CLASSES)
    assert '<KeyPointLabels name="point" toName="image">' in xml
    assert xml.count('<Label value="car" background="#400080"/>') == 2
    assert '<BrushLabels name="tag" toName="image">' in xml
