"""The fleet's seed set ROOT/seeds: validated adds, provenance, bootstrap, and retraining."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lam.classes import ClassList
from lam.errors import LamflowError
from lamflow.params import load_params
from tasks.seed_bootstrap import bootstrap_seed_set
from tasks.seed_set import add_seed, check_seed_label, list_seeds, seed_set_fingerprint
from tests.conftest import make_scene
from tests.pipeline.helpers import TINY_CLASSES, write_params

CLASSES = ClassList.from_json(TINY_CLASSES)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_add_seed_writes_frame_label_and_provenance_last(tmp_path: Path) -> None:
    img, lab = make_scene(1)
    sparse = np.full_like(lab, 255)
    sparse[10:13, 10:13] = 2  # a reviewer's click: the rest stays void
    rec = add_seed(str(tmp_path), "d1_0001", _png(img), "png", sparse, CLASSES, {"task_id": 7})
    assert rec["labeled_pixels"] == 9 and rec["task_id"] == 7
    assert (tmp_path / "images/d1_0001.png").exists()
    saved = np.array(Image.open(tmp_path / "labels/d1_0001.png"))
    assert (saved == sparse).all()
    assert [p["stem"] for p in list_seeds(str(tmp_path))] == ["d1_0001"]
    assert json.loads((tmp_path / "provenance/d1_0001.json").read_text())["sha256"] == rec["sha256"]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (np.zeros((10, 10), np.uint8), "label is 10x10, frame is 64x96"),
        (np.full((64, 96), 255, np.uint8), "label is empty"),
        (np.full((64, 96), 7, np.uint8), "7"),
    ],
)
def test_invalid_seed_labels_are_refused_and_nothing_is_written(
    tmp_path: Path, label: np.ndarray, message: str
) -> None:
    img, _ = make_scene(2)
    with pytest.raises(LamflowError, match=message):
        add_seed(str(tmp_path), "d1_0002", _png(img), "png", label, CLASSES, {})
    assert not tmp_path.joinpath("images").exists() and list_seeds(str(tmp_path)) == []


def test_check_seed_label_accepts_a_dense_label() -> None:
    _, lab = make_scene(3)
    check_seed_label(lab, lab.shape, CLASSES)


def test_bootstrap_once_then_the_set_is_the_truth(tmp_path: Path, seed_set: Path) -> None:
    seeds = str(tmp_path / "seeds")
    images, labels = str(seed_set / "images"), str(seed_set / "labels")
    first = bootstrap_seed_set(seeds, images, labels, ["seed_00", "seed_01"], CLASSES)
    assert [p["source"] for p in first] == ["bootstrap", "bootstrap"]
    again = bootstrap_seed_set(seeds, images, labels, ["seed_02"], CLASSES)
    assert [p["stem"] for p in again] == ["seed_00", "seed_01"]
    # a bootstrap a crash cut short (one seed copied, no marker) is completed next time
    cut = str(tmp_path / "cut")
    bootstrap_seed_set(cut, images, labels, ["seed_00"], CLASSES)
    (tmp_path / "cut" / "bootstrap.json").unlink()
    done = bootstrap_seed_set(cut, images, labels, ["seed_00", "seed_01"], CLASSES)
    assert [p["stem"] for p in done] == ["seed_00", "seed_01"]
    with pytest.raises(LamflowError, match="'nope' not found"):
        bootstrap_seed_set(str(tmp_path / "other"), images, labels, ["nope"], CLASSES)


def test_a_new_or_edited_seed_trains_a_new_model(tmp_path: Path, seed_set: Path) -> None:
    """ensure_model is content-addressed on the seed set's bytes: the same set reuses the model,
    an added seed (the review loop) or a label edited by hand trains a new one."""
    from tasks.models import ensure_model

    root = tmp_path / "root"
    params = load_params(write_params(tmp_path / "params.yaml", str(root), seed_set))
    first = ensure_model(str(root), params, progress=False)
    assert first["trained"] and first["seeds"] == 2
    assert not ensure_model(str(root), params, progress=False)["trained"]

    img, lab = make_scene(50)
    add_seed(str(root / "seeds"), "d9_0001", _png(img), "png", lab, CLASSES, {"source": "test"})
    before = seed_set_fingerprint(str(root / "seeds"))
    second = ensure_model(str(root), params, progress=False)
    assert second["trained"] and second["seeds"] == 3
    assert second["model_version"] != first["model_version"]

    label = root / "seeds/labels/d9_0001.png"
    edited = np.array(Image.open(label))
    edited[:5] = 1  # sky relabeled road
    Image.fromarray(edited).save(label)
    assert seed_set_fingerprint(str(root / "seeds")) != before
    third = ensure_model(str(root), params, progress=False)
    assert third["trained"] and third["model"] != second["model"]
