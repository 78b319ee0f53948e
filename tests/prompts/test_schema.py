"""Prompt files: valid ones parse (and round-trip), malformed ones name frame/class/field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.formats.coco import encode_rle
from lam.prompts.schema import load_prompts, parse_prompts

SIZE = (64, 96)  # (H, W)


def _doc(**region) -> dict:
    return {"version": 1, "frame": "f1", "image_size": [96, 64], "regions": [region]}


def test_every_prompt_type_parses_and_round_trips(scene_classes) -> None:
    mask = np.zeros(SIZE, bool)
    mask[40:50, 10:20] = True
    doc = {
        "regions": [
            {"class": "road", "positive": [[10, 60], [50, 55.5]], "negative": [[5, 5]]},
            {"class": "car", "box": [10, 34, 34, 48], "positive": [[20, 40]]},
            {"class": "sky", "scribbles": [[[0, 0], [95, 10]]], "negative_scribbles": [[[1, 60]]]},
            {"class": "road", "mask": encode_rle(mask)},
        ]
    }
    fp = parse_prompts(doc, scene_classes, "f1", SIZE)
    assert [r.class_id for r in fp.regions] == [1, 2, 0, 1]
    assert fp.regions[0].positive.shape == (2, 2) and fp.regions[0].positive.dtype == np.float32
    assert fp.regions[1].box.tolist() == [10, 34, 34, 48]
    assert (fp.regions[3].mask == mask).all()
    again = load_prompts(json.dumps(fp.to_json()).encode(), scene_classes, "f1", SIZE)
    assert again.to_json() == fp.to_json()


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ({"class": "tram", "positive": [[1, 1]]}, "regions[0] (class 'tram'): class: unknown"),
        ({"class": "car"}, "(class 'car'): needs at least one of positive, box"),
        ({"class": "car", "box": [30, 5, 10, 20]}, "(class 'car'): box: need x0 < x1"),
        ({"class": "car", "box": [0, 0, 200, 20]}, "(class 'car'): box: box [0, 0, 200, 20]"),
        ({"class": "car", "box": [1, 2, 3]}, "(class 'car'): box: expected [x0, y0, x1, y1]"),
        ({"class": "road", "positive": [[10, 99]]}, "(class 'road'): positive: point [10, 99]"),
        ({"class": "road", "positive": [[1, "a"]]}, "(class 'road'): positive: expected"),
        ({"class": "road", "positive": [[1]]}, "(class 'road'): positive:"),
        ({"class": "sky", "scribbles": [[]]}, "(class 'sky'): scribbles[0]: a scribble needs"),
        (
            {"class": "sky", "mask": {"size": [2, 2], "counts": [4]}},
            "(class 'sky'): mask: mask size",
        ),
        ({"class": "sky", "positive": [[1, 1]], "colour": 3}, "(class 'sky'): unknown field(s)"),
    ],
)
def test_malformed_region_names_frame_class_and_field(scene_classes, region, message) -> None:
    with pytest.raises(LamflowError) as err:
        parse_prompts(_doc(**region), scene_classes, "f1", SIZE)
    assert "frame 'f1'" in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"regions": {}}, "regions: expected a list"),
        ({"regions": [], "frame": "other"}, "frame: file says 'other'"),
        ({"regions": [], "image_size": [10, 10]}, "image_size: file says [10, 10]"),
        ({"regions": [], "version": 9}, "version: expected 1"),
        ({"regions": [], "extra": 1}, "unknown top-level field(s) ['extra']"),
        ([], "must be a JSON object"),
    ],
)
def test_malformed_file_names_the_field(scene_classes, doc, message) -> None:
    with pytest.raises(LamflowError, match=None) as err:
        parse_prompts(doc, scene_classes, "f1", SIZE)
    assert message in str(err.value)


def test_invalid_json_names_the_frame(scene_classes) -> None:
    with pytest.raises(LamflowError, match="frame 'f7': prompt file is not valid JSON"):
        load_prompts(b"{regions: ", scene_classes, "f7", SIZE)
