"""The CVAT auto-annotation function (cli/cvat.py), without a CVAT server.

Each frame's masks, decoded with cvat-sdk's own `decode_mask`, must paint exactly the label PNG
`lamflow annotate` wrote for it; the function goes through cvat-sdk's real driver
(`annotate_task`: spec checks, label matching by name, remapping, the upload request) with only
the server side faked (the task's labels and frames, and the upload call); and cvat-cli's own
loader builds it from `-p` parameters.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.auto_annotation.driver as driver
import cvat_sdk.models as cvat_models
import numpy as np
import pytest
from cvat_cli._internal.common import FunctionLoader
from cvat_cli._internal.parsers import parse_function_parameter
from cvat_sdk.masks import decode_mask
from PIL import Image

from cli.cvat import create
from cli.main import main
from lam.errors import LamflowError
from lam.formats.cvat import class_polygons
from lam.imageio import decode_label
from tests.cli.test_cli import FAST, _annotate, _train
from tests.conftest import CAMVID, make_scene
from tests.pipeline.helpers import TINY_CLASSES

NAMES = [c["name"] for c in TINY_CLASSES["classes"]]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model trained on one synthetic scene, and `lamflow annotate`'s output for 4
    frames (PNG) of other scenes: {"model", "images", "out"}."""
    folder = tmp_path_factory.mktemp("scenes")
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    for i in range(5):
        img, lab = make_scene(i)
        Image.fromarray(img).save(folder / "images" / f"drive1_{i:04d}.png")
        Image.fromarray(lab).save(folder / "labels" / f"drive1_{i:04d}.png")
    (folder / "classes.json").write_text(json.dumps(TINY_CLASSES))
    assert _train(folder, folder / "model", extra=FAST) == 0
    drop = folder / "drop"
    drop.mkdir()
    for i in range(1, 5):
        shutil.copy(folder / "images" / f"drive1_{i:04d}.png", drop)
    assert _annotate(folder / "model", drop, folder / "out", "--no-progress") == 0
    return {"model": folder / "model", "images": drop, "out": folder / "out"}


def _context(**kwargs: Any) -> Any:
    """What cvat-sdk's driver passes to `detect` (its own context class)."""
    values = {"frame_name": "frame.png", "conf_threshold": None, "conv_mask_to_poly": False}
    return driver._DetectionFunctionContextImpl(**{**values, **kwargs})


def _paint(shapes: list[Any], height: int, width: int, void: int) -> np.ndarray:
    """Decode each mask shape (cvat-sdk's decode_mask) into one label map; the masks of a
    frame must not overlap."""
    label = np.full((height, width), void, dtype=np.uint8)
    for shape in shapes:
        assert shape.type.value == "mask" and shape.frame == 0
        mask = decode_mask(shape.points, image_width=width, image_height=height)
        assert (label[mask] == void).all(), "two masks claim the same pixel"
        label[mask] = shape.label_id
    return label


def _frames(images: Path) -> list[Path]:
    return sorted(images.iterdir())


def test_masks_rebuild_the_label_png_annotate_wrote(labeled: dict[str, Path]) -> None:
    function = create(model=str(labeled["model"]))
    ids = [label.id for label in function.spec.labels]
    assert [label.name for label in function.spec.labels] == NAMES and ids == [0, 1, 2]
    assert {label.type for label in function.spec.labels} == {"mask"}
    classes_seen = set()
    for frame in _frames(labeled["images"]):
        expected = decode_label((labeled["out"] / "labels" / f"{frame.stem}.png").read_bytes())
        with Image.open(frame) as image:
            shapes = function.detect(_context(frame_name=frame.name), image)
        assert len(shapes) == len(np.unique(expected))  # one mask per class present
        painted = _paint(list(shapes), *expected.shape, void=255)
        np.testing.assert_array_equal(painted, expected)
        classes_seen |= set(np.unique(expected).tolist())
    assert len(classes_seen) >= 2  # the frames exercise more than one mask


def test_conf_threshold_leaves_out_the_pixels_annotate_was_unsure_of(
    labeled: dict[str, Path],
) -> None:
    function = create(model=str(labeled["model"]))
    frame = _frames(labeled["images"])[0]
    expected = decode_label((labeled["out"] / "labels" / f"{frame.stem}.png").read_bytes())
    confidence = np.asarray(Image.open(labeled["out"] / "confidence" / f"{frame.stem}.png"))
    threshold = float(np.median(confidence)) / 255  # about half the pixels go
    with Image.open(frame) as image:
        shapes = function.detect(_context(conf_threshold=threshold), image)
    painted = _paint(list(shapes), *expected.shape, void=255)
    kept = confidence / 255.0 >= threshold
    assert 0 < kept.mean() < 1
    np.testing.assert_array_equal(painted, np.where(kept, expected, 255))


def test_polygons_are_the_cvat_export_s(labeled: dict[str, Path]) -> None:
    """--conv-mask-to-poly: the polygons and z order `review-export --format cvat` writes."""
    function = create(model=str(labeled["model"]))
    frame = _frames(labeled["images"])[1]
    expected = decode_label((labeled["out"] / "labels" / f"{frame.stem}.png").read_bytes())
    with Image.open(frame) as image:
        shapes = function.detect(_context(conv_mask_to_poly=True), image)
    # the export's polygons in its z order, every one of at least three points (what CVAT's
    # server accepts), tiny regions included
    want = [
        (cid, z, poly.ravel().tolist())
        for z, (cid, poly) in enumerate(class_polygons(expected, function.classes))
    ]
    assert [s.type.value for s in shapes] == ["polygon"] * len(want) and want
    assert min(len(s.points) for s in shapes) >= 6
    assert [(s.label_id, s.z_order, s.points) for s in shapes] == want


# --- through cvat-sdk's driver, with the server faked ----------------------------------------


class _FakeTasksApi:
    def __init__(self) -> None:
        self.uploads: list[tuple[str, int, Any]] = []

    def partial_update_annotations(self, action: str, task_id: int, **kwargs: Any) -> None:
        self.uploads.append((action, task_id, kwargs["patched_labeled_data_request"]))


def _fake_task(monkeypatch: pytest.MonkeyPatch, frames: list[Path], labels: list[Any]) -> Any:
    """A client whose task has `labels` (with server-side ids from 100) and `frames`; the
    driver's TaskDataset is replaced by this task's labels and frames (the download is the
    only part of annotate_task that is not run)."""
    samples = [
        SimpleNamespace(
            frame_index=i,
            frame_name=path.name,
            media=SimpleNamespace(load_image=lambda path=path: Image.open(path)),
        )
        for i, path in enumerate(frames)
    ]
    dataset = SimpleNamespace(labels=labels, samples=samples)
    monkeypatch.setattr(driver, "TaskDataset", lambda client, task_id, **kw: dataset)
    api = _FakeTasksApi()
    return SimpleNamespace(logger=logging.getLogger("cvat-test"), tasks=SimpleNamespace(api=api))


def _task_labels(names: list[str], type_: str = "any") -> list[Any]:
    return [
        cvat_models.Label(name=n, id=100 + i, type=type_, attributes=[], sublabels=[])
        for i, n in enumerate(names)
    ]


def test_annotate_task_uploads_masks_that_rebuild_annotate_s_labels(
    labeled: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = _frames(labeled["images"])
    task_names = ["car", "sky", "road", "bus"]  # another order, and a label the model lacks
    client = _fake_task(monkeypatch, frames, _task_labels(task_names))
    cvataa.annotate_task(client, 7, create(model=str(labeled["model"])), clear_existing=False)
    ((action, task_id, request),) = client.tasks.api.uploads
    assert (action, task_id) == ("create", 7) and request.tags == []
    by_frame: dict[int, list[Any]] = {}
    for shape in request.shapes:
        assert shape.source == "auto"
        by_frame.setdefault(shape.frame, []).append(shape)
    assert sorted(by_frame) == list(range(len(frames)))
    for i, frame in enumerate(frames):
        expected = decode_label((labeled["out"] / "labels" / f"{frame.stem}.png").read_bytes())
        h, w = expected.shape
        painted = np.full((h, w), 255, np.uint8)
        for shape in by_frame[i]:  # task label ids, mapped back to class ids by name
            cid = NAMES.index(task_names[shape.label_id - 100])
            painted[decode_mask(shape.points, image_width=w, image_height=h)] = cid
        np.testing.assert_array_equal(painted, expected)


def test_a_class_the_task_lacks_stops_the_run_naming_it(
    labeled: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    frames = _frames(labeled["images"])[:2]
    client = _fake_task(monkeypatch, frames, _task_labels(["sky", "road"]))
    function = create(model=str(labeled["model"]))
    with pytest.raises(cvataa.BadFunctionError, match="label 'car' is not in dataset"):
        cvataa.annotate_task(client, 7, function)
    assert client.tasks.api.uploads == []
    # --allow-unmatched-labels: the car masks are dropped, and cvat-sdk says so in its log.
    with caplog.at_level(logging.INFO, logger="cvat-test"):
        cvataa.annotate_task(client, 7, function, allow_unmatched_labels=True)
    assert "label 'car' is not in dataset; any annotations using it will be ignored" in (
        caplog.text
    )
    ((_, _, request),) = client.tasks.api.uploads
    assert request.shapes and {s.label_id for s in request.shapes} <= {100, 101}


def test_polygon_labels_need_conv_mask_to_poly(
    labeled: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = _frames(labeled["images"])[:1]
    client = _fake_task(monkeypatch, frames, _task_labels(NAMES, "polygon"))
    function = create(model=str(labeled["model"]))
    with pytest.raises(cvataa.BadFunctionError, match="type 'mask' in the function"):
        cvataa.annotate_task(client, 7, function)
    cvataa.annotate_task(client, 7, function, conv_mask_to_poly=True)
    ((_, _, request),) = client.tasks.api.uploads
    assert request.shapes and {s.type.value for s in request.shapes} == {"polygon"}


# --- parameters -------------------------------------------------------------------------------


def test_cvat_cli_builds_it_from_p_parameters(labeled: dict[str, Path]) -> None:
    """cvat-cli's own parser and loader (private to cvat_cli, pinned at 2.80.0)."""
    params = dict([parse_function_parameter(f"model=str:{labeled['model']}")])
    function = FunctionLoader("cli.cvat", None, params).load()
    assert [label.name for label in function.spec.labels] == NAMES


def test_root_loads_the_model_the_nightly_run_published(
    labeled: dict[str, Path], tmp_path: Path
) -> None:
    from flows.state import write_model_pointer

    version = json.loads((labeled["model"] / "config.json").read_text())["version"]
    with pytest.raises(LamflowError, match="no published model under"):
        create(root=str(tmp_path))
    write_model_pointer(str(tmp_path), {"model": str(labeled["model"]), "model_version": version})
    function = create(root=str(tmp_path))
    assert function.model_url == str(labeled["model"]) and function.version == version


def test_parameters_are_checked(labeled: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of model=DIR and root=ROOT"):
        create()
    with pytest.raises(ValueError, match="exactly one of"):
        create(model=str(labeled["model"]), root=str(tmp_path))
    with pytest.raises(LamflowError, match="no model at"):
        create(model=str(tmp_path / "missing"))


def test_an_unreadable_frame_is_named(labeled: dict[str, Path], tmp_path: Path) -> None:
    function = create(model=str(labeled["model"]))
    good = _frames(labeled["images"])[0].read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[: len(good) // 2])
    with Image.open(cut) as image, pytest.raises(LamflowError, match="cut.png: cannot decode"):
        function.detect(_context(frame_name="cut.png"), image)


# --- CamVid JPEGs: annotate decodes them with torchvision, the function gets PIL's image ------


@pytest.mark.skipif(not (CAMVID / "classes.json").exists(), reason="CamVid not found")
def test_camvid_jpegs_give_annotate_s_labels(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    for split in ("images", "labels"):
        (seeds / split).mkdir(parents=True)
    stem = "0006R0_f03150"
    shutil.copy(CAMVID / "train/images" / f"{stem}.jpg", seeds / "images")
    shutil.copy(CAMVID / "train/labels" / f"{stem}.png", seeds / "labels")
    shutil.copy(CAMVID / "classes.json", seeds / "classes.json")
    assert _train(seeds, tmp_path / "model", seeds=(stem,), extra=FAST) == 0
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in sorted((CAMVID / "val/images").iterdir())[:3]:
        shutil.copy(path, drop)
    assert main(["annotate", "--model", str(tmp_path / "model"), "--images", str(drop),
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0  # fmt: skip
    function = create(model=str(tmp_path / "model"))
    for frame in _frames(drop):
        expected = decode_label((tmp_path / "out/labels" / f"{frame.stem}.png").read_bytes())
        with Image.open(frame) as image:
            shapes = function.detect(_context(frame_name=frame.name), image)
        assert len(shapes) == len(np.unique(expected)) > 2
        np.testing.assert_array_equal(_paint(list(shapes), *expected.shape, 11), expected)
