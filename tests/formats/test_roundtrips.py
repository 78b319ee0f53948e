"""Round trips: export -> import gives the same masks, for every review/export format."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.formats.coco import coco_to_labels, decode_rle, encode_rle, labels_to_coco
from lam.formats.cvat import (
    cityscapes_zip_to_labels,
    cvat_xml_to_labels,
    labels_to_cityscapes_zip,
    labels_to_cvat_xml,
)
from lam.formats.labelstudio import (
    brush_rle_to_mask,
    decode_brush_rle,
    encode_brush_rle,
    labeling_config,
    labels_to_tasks,
    mask_to_brush_rle,
    tasks_to_labels,
)
from tests.conftest import make_scene


@pytest.fixture()
def classes(tiny_classes: dict) -> ClassList:
    return ClassList.from_json(tiny_classes)


def _scenes(n: int = 3, void: bool = False) -> list[np.ndarray]:
    labs = []
    for i in range(n):
        _, lab = make_scene(i)
        lab = lab.copy()
        lab[5:12, 60:70] = 2  # a second car-class region (several polygons per class)
        if void:
            lab[:3] = 255
            lab[30:34, 40:44] = 255
        labs.append(lab)
    return labs


def _random_mask(seed: int, shape=(37, 53)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) > 0.6


# -- COCO RLE ---------------------------------------------------------------------------------
def test_coco_rle_matches_pycocotools_conventions() -> None:
    # Column-major runs starting with zeros: [[0, 1], [1, 1]] -> runs [1, 3] -> "13".
    mask = np.array([[0, 1], [1, 1]], dtype=bool)
    assert encode_rle(mask, compressed=False) == {"size": [2, 2], "counts": [1, 3]}
    assert encode_rle(mask)["counts"] == "13"
    assert encode_rle(np.ones((2, 2), bool), compressed=False)["counts"] == [0, 4]


@pytest.mark.parametrize("seed", range(5))
def test_coco_rle_round_trip(seed: int) -> None:
    mask = _random_mask(seed, (seed * 7 + 5, seed * 11 + 3))
    for compressed in (True, False):
        assert (decode_rle(encode_rle(mask, compressed)) == mask).all()
    big = np.zeros((300, 400), bool)
    big[10:290, 5:395] = True  # runs > 2**16 exercise multi-group and negative differences
    assert (decode_rle(encode_rle(big)) == big).all()


def test_coco_rle_bad_input_is_named() -> None:
    with pytest.raises(LamflowError, match="RLE runs sum to 3, expected H\\*W = 4"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(LamflowError, match="'size'"):
        decode_rle({"counts": "13"})


def test_coco_export_round_trip(classes) -> None:
    labs = _scenes(void=True)
    coco = labels_to_coco([(f"f{i}.jpg", lab) for i, lab in enumerate(labs)], classes)
    coco = json.loads(json.dumps(coco))
    assert {c["name"] for c in coco["categories"]} == {"sky", "road", "car"}
    assert all(a["category_id"] >= 1 and len(a["bbox"]) == 4 for a in coco["annotations"])
    back = coco_to_labels(coco, classes)
    for i, lab in enumerate(labs):
        assert (back[f"f{i}.jpg"] == lab).all()


# -- Label Studio brush RLE -------------------------------------------------------------------
def test_brush_rle_header_and_runs() -> None:
    rle = encode_brush_rle(np.array([7] * 20 + [0], dtype=np.uint8))
    bits = "".join(f"{b:08b}" for b in rle)
    assert int(bits[:32], 2) == 21  # number of values
    assert int(bits[32:37], 2) == 7  # word size - 1
    assert [int(bits[37 + 4 * i : 41 + 4 * i], 2) for i in range(4)] == [2, 3, 7, 15]
    # run of 20 sevens: repeat bit, size index 2 (8 bits), 19, value 7; then single 0.
    body = bits[53:]
    assert body[:19] == "1" + "10" + f"{19:08b}" + f"{7:08b}"
    assert body[19:33] == "0" + "00" + "000" + f"{0:08b}"
    assert decode_brush_rle(rle).tolist() == [7] * 20 + [0]


@pytest.mark.parametrize("seed", range(3))
def test_brush_rle_mask_round_trip(seed: int) -> None:
    mask = _random_mask(seed)
    rle = mask_to_brush_rle(mask)
    assert all(0 <= b < 256 for b in rle)
    assert (brush_rle_to_mask(rle, *mask.shape) == mask).all()
    long = np.zeros((300, 300), bool)  # a run > 2**16 values
    long[250:] = True
    assert (brush_rle_to_mask(mask_to_brush_rle(long), 300, 300) == long).all()


def test_label_studio_tasks_round_trip(classes) -> None:
    labs = _scenes(void=True)
    tasks = labels_to_tasks(
        [(f"f{i}", f"/data/f{i}.jpg", lab) for i, lab in enumerate(labs)]
        + [("todo", "/t.jpg", None)],
        classes,
        as_predictions=False,
    )
    tasks = json.loads(json.dumps(tasks))
    assert tasks[-1] == {"data": {"image": "/t.jpg", "frame": "todo"}}
    back = tasks_to_labels(tasks, classes)
    assert sorted(back) == ["f0", "f1", "f2"]
    for i, lab in enumerate(labs):
        assert (back[f"f{i}"] == lab).all()
    assert '<Label value="car" background="#400080"/>' in labeling_config(classes)


def test_label_studio_bad_label_is_named(classes) -> None:
    lab = _scenes(1)[0]
    tasks = labels_to_tasks([("f0", "/f0.jpg", lab)], classes)
    tasks[0]["predictions"][0]["result"][1]["value"]["brushlabels"] = ["tram"]
    with pytest.raises(LamflowError, match="task 0 \\(f0\\), result 1: brushlabels \\['tram'\\]"):
        tasks_to_labels(tasks, classes)


# -- CVAT ------------------------------------------------------------------------------------
def test_cvat_xml_round_trip(classes) -> None:
    labs = _scenes()
    rnd = np.where(_random_mask(9, (64, 96)), 2, 1).astype(np.uint8)  # many tiny regions
    frames = [(f"f{i}.jpg", lab) for i, lab in enumerate([*labs, rnd])]
    xml = labels_to_cvat_xml(frames + [("todo.jpg", None)], classes, {"todo.jpg": (64, 96)})
    assert b"<version>1.1</version>" in xml and b'<image id="4" name="todo.jpg"' in xml
    back = cvat_xml_to_labels(xml, classes)
    assert sorted(back) == [f"f{i}.jpg" for i in range(4)]
    for name, lab in frames:
        assert (back[name] == lab).all(), name


def test_cvat_xml_polygons_of_tiny_regions_have_three_points(classes) -> None:
    """Datumaro (CVAT's importer) refuses a polygon under three points, failing the whole file:
    a one- and a two-pixel region are written with three, and come back exactly."""
    lab = np.full((8, 10), 0, np.uint8)
    lab[2, 3] = 1  # one pixel
    lab[5, 6:8] = 2  # two pixels
    xml = labels_to_cvat_xml([("a.jpg", lab)], classes)
    points = [p.split(b";") for p in re.findall(rb'points="([^"]*)"', xml)]
    assert len(points) == 3 and min(len(p) for p in points) == 3
    assert (cvat_xml_to_labels(xml, classes)["a.jpg"] == lab).all()


def test_cvat_xml_unknown_label_is_named(classes) -> None:
    xml = labels_to_cvat_xml([("a.jpg", _scenes(1)[0])], classes).replace(b'"car"', b'"tram"')
    with pytest.raises(LamflowError, match="CVAT image 'a.jpg': label 'tram'"):
        cvat_xml_to_labels(xml, classes)


def test_cityscapes_zip_round_trip_keeps_void(classes) -> None:
    labs = _scenes(void=True)
    data = labels_to_cityscapes_zip([(f"f{i}", lab) for i, lab in enumerate(labs)], classes)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "label_colors.txt" in names and "gtFine/default/f0_gtFine_labelIds.png" in names
    back = cityscapes_zip_to_labels(data, classes)
    for i, lab in enumerate(labs):
        assert (back[f"f{i}"] == lab).all()
