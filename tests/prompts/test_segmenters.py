"""Prompt segmenters: every registered backend, the offline fallback's quality, SAM plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.prompts import SEGMENTERS, get_segmenter
from lam.prompts.region_grow import RegionGrowSegmenter
from lam.prompts.sam import SamSegmenter
from lam.prompts.schema import parse_prompts
from tests.conftest import make_scene


def _box(lab: np.ndarray, cid: int) -> list[int]:
    ys, xs = np.nonzero(lab == cid)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _scene_prompts(lab: np.ndarray, classes) -> object:
    doc = {
        "regions": [
            {"class": "sky", "positive": [[10, 5], [80, 8]]},
            {"class": "road", "positive": [[10, 60]], "scribbles": [[[5, 62], [90, 62]]]},
            {"class": "car", "box": _box(lab, 2), "positive": []},
        ]
    }
    return parse_prompts(doc, classes, "f", lab.shape)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _build(name: str, tiny_sam):
    if name == "sam":
        return get_segmenter(name)(model=tiny_sam)
    return get_segmenter(name)(backbone=None)


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_every_backend_returns_a_class_map(name, scene_classes, tiny_sam) -> None:
    img, lab = make_scene(1)
    out = _build(name, tiny_sam).segment_frame(img, _scene_prompts(lab, scene_classes), 255)
    assert out.shape == lab.shape and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) <= {0, 1, 2, 255}


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known: region_grow, sam"):
        get_segmenter("grabcutz")


@pytest.mark.parametrize("use_backbone", [False, True])
def test_region_grow_recovers_the_scene(scene_classes, tiny_backbone, use_backbone) -> None:
    img, lab = make_scene(2)
    seg = RegionGrowSegmenter(backbone=tiny_backbone if use_backbone else None)
    out = seg.segment_frame(img, _scene_prompts(lab, scene_classes), 255)
    for cid in range(3):
        assert _iou(out == cid, lab == cid) > 0.85, (cid, _iou(out == cid, lab == cid))


def test_unprompted_pixels_stay_void(scene_classes) -> None:
    img, lab = make_scene(3)
    fp = parse_prompts(
        {"regions": [{"class": "car", "box": _box(lab, 2)}]}, scene_classes, "f", lab.shape
    )
    out = RegionGrowSegmenter(backbone=None).segment_frame(img, fp, 255)
    assert _iou(out == 2, lab == 2) > 0.9
    assert set(np.unique(out).tolist()) == {2, 255}
    assert (out[lab != 2] == 255).mean() > 0.99


def test_negative_click_stops_growth(scene_classes) -> None:
    img, lab = make_scene(4)
    # Sky and road look alike in colour-only features at this threshold; a negative click on
    # the road keeps the sky region out of it.
    doc = {"regions": [{"class": "sky", "positive": [[10, 5]], "negative": [[10, 60]]}]}
    fp = parse_prompts(doc, scene_classes, "f", lab.shape)
    out = RegionGrowSegmenter(backbone=None, threshold=-1.0).segment_frame(img, fp, 255)
    assert (out[lab == 1] == 255).mean() > 0.9
    assert (out[lab == 0] == 0).mean() > 0.9


def test_mask_prompt_is_kept(scene_classes) -> None:
    from lam.formats.coco import encode_rle

    img, lab = make_scene(5)
    fp = parse_prompts(
        {"regions": [{"class": "road", "mask": encode_rle(lab == 1)}]},
        scene_classes,
        "f",
        lab.shape,
    )
    out = RegionGrowSegmenter(backbone=None).segment_frame(img, fp, 255)
    assert ((out == 1) == (lab == 1)).all()


def test_sam_gets_box_and_points_per_region(scene_classes, tiny_sam) -> None:
    img, lab = make_scene(6)
    seg = SamSegmenter(model=tiny_sam)
    fp = parse_prompts(
        {
            "regions": [
                {"class": "car", "box": _box(lab, 2), "positive": [[30, 40]], "negative": [[2, 2]]},
                {"class": "road", "positive": [[10, 60]], "scribbles": [[[0, 62], [90, 62]]]},
            ]
        },
        scene_classes,
        "f",
        lab.shape,
    )
    car = seg.region_prompt(fp.regions[0])
    assert car["point_labels"].tolist() == [1, 0] and car["box"].tolist() == _box(lab, 2)
    assert car["multimask_output"] is False
    road = seg.region_prompt(fp.regions[1])
    assert len(road["point_coords"]) == 1 + 5 and "box" not in road
    seg.prepare(img)
    mask = seg.segment_region(img, fp.regions[0])
    assert mask.shape == lab.shape and mask.dtype == bool


def test_sam_without_checkpoint_fails_clearly(tmp_path) -> None:
    with pytest.raises(LamflowError, match="needs a checkpoint"):
        SamSegmenter()
    with pytest.raises(FileNotFoundError, match="sam_vit_b.pth"):
        SamSegmenter(checkpoint=str(tmp_path / "sam_vit_b.pth"))


def test_prompts_for_another_size_are_refused(scene_classes) -> None:
    img, lab = make_scene(0)
    fp = parse_prompts(
        {"regions": [{"class": "car", "positive": [[1, 1]]}]}, scene_classes, "f", (32, 32)
    )
    with pytest.raises(LamflowError, match="prompts were drawn on"):
        RegionGrowSegmenter(backbone=None).segment_frame(img, fp, 255)
