"""`lamflow adapt`: a new model directory self-trained on a drop, timed on its own; errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cli.main import main
from tests.cli.test_cli import FAST, _annotate, _error, _train

ADAPT_FAST = ["--set", "adapt.max_frames=3", "--set", "adapt.pixels_per_frame=300"]


def _adapt(model: Path, folder: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "adapt",
            "--model",
            str(model),
            "--images",
            str(folder / "images"),
            "--seed-images",
            str(folder / "images"),
            "--seed-labels",
            str(folder / "labels"),
            "--out",
            str(out),
            "--no-progress",
            *ADAPT_FAST,
            *extra,
        ]
    )


def test_adapt_writes_a_new_model_and_leaves_the_source_alone(
    scene_folder: Path, tmp_path: Path, capsys
) -> None:
    model = tmp_path / "model"
    assert _train(scene_folder, model, extra=FAST) == 0
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    capsys.readouterr()
    out = tmp_path / "adapted"
    assert _adapt(model, scene_folder, out, "--set", "adapt.rounds=2") == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    report = json.loads((out / "adapt_report.json").read_text())
    assert printed["model_version"] == report["model_version"] != report["source_version"]
    assert len(printed["frames"]) == 3 and "drive1_0000" not in report["frames"]  # the seed
    assert report["seconds"] >= report["adapt_seconds"] > 0
    assert sum(report["pseudo_class_pixels"].values()) == report["pseudo_pixels"] > 0
    assert report["settings"]["rounds"] == 2
    # The adapted model keeps the seed provenance (it can be adapted again) and labels frames.
    assert json.loads((out / "train_report.json").read_text())["seeds"][0]["stem"] == "drive1_0000"
    assert _annotate(out, scene_folder / "images", tmp_path / "ann") == 0
    lab = np.asarray(Image.open(tmp_path / "ann" / "labels" / "drive1_0003.png"))
    assert lab.shape == (64, 96) and lab.max() <= 2


def test_adapt_errors_are_one_line(scene_folder: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    assert _train(scene_folder, model, extra=FAST) == 0
    assert _adapt(model, scene_folder, model) == 2
    assert "--out must differ" in _error(capsys)

    assert _adapt(tmp_path / "nothing", scene_folder, tmp_path / "o") == 2
    assert "no model at" in _error(capsys)

    changed = tmp_path / "changed"
    shutil.copytree(scene_folder, changed)
    lab = np.asarray(Image.open(changed / "labels" / "drive1_0000.png")).copy()
    lab[0, 0] = (lab[0, 0] + 1) % 3
    Image.fromarray(lab).save(changed / "labels" / "drive1_0000.png")
    assert _adapt(model, changed, tmp_path / "o") == 2
    err = _error(capsys)
    assert "seed 'drive1_0000': the label in" in err
    assert "is not the one the model was trained on" in err

    (model / "train_report.json").unlink()
    assert _adapt(model, scene_folder, tmp_path / "o") == 2
    assert "adapt needs the seeds it was trained on" in _error(capsys)

    assert _adapt(model, scene_folder, tmp_path / "o", "--set", "adapt.interpolate=2") == 2
    assert "adapt.interpolate" in _error(capsys)
