"""Stage `zero_shot_seeds`, `train` on its confidence, and the nightly zero-shot bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tasks.zero_shot_seeds as stage
from lam.errors import LamflowError
from lam.imageio import decode_label
from lam.zero_shot.grounded_sam import GroundedSamSeeder
from lam.zero_shot.refinement import PhraseTable, class_phrases
from lamflow.params import ZeroShotSeedsParams, load_params
from tests.conftest import make_scene
from tests.pipeline.helpers import TINY_CLASSES, write_params
from tests.zero_shot.test_oracles import BoxDetector, BoxSam

NAMES = [c["name"] for c in TINY_CLASSES["classes"]]


class SceneDetector(BoxDetector):
    """Finds the sky (top half) and the road (bottom half) of `make_scene` frames; nothing in
    frames whose name says 'blank'."""

    def __init__(self):
        super().__init__({})
        self.calls = 0

    def detect(self, image, phrases):
        self.calls += 1
        self.asked.append(list(phrases))
        if image.mean() < 5:  # the blank frame
            return []
        h, w = image.shape[:2]
        from lam.zero_shot.detectors import Detection

        return [
            Detection("sky", np.array([0, 0, w, h // 2 - 5], np.float32), 0.9, np.zeros((0, 2))),
            Detection("road", np.array([0, h // 2 + 5, w, h], np.float32), 0.6, np.zeros((0, 2))),
        ]


@pytest.fixture()
def frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(make_scene(i)[0]).save(folder / f"drv_{i:04d}.png")
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(folder / "drv_blank.png")
    (tmp_path / "classes.json").write_text(json.dumps(TINY_CLASSES))
    return folder


@pytest.fixture()
def oracle(monkeypatch):
    detector = SceneDetector()

    def build(params, vocabulary, classes, model=None):
        table = PhraseTable(NAMES, class_phrases(NAMES, params.names))
        return GroundedSamSeeder(NAMES, classes.ignore_index, detector, BoxSam(), table)

    monkeypatch.setattr(stage, "build_seeder", build)
    monkeypatch.setattr(stage, "check_models", lambda params, model=None: None)  # no paths
    return detector


def test_stage_writes_used_and_reports_rejected_frames(frames, oracle, tmp_path):
    out = tmp_path / "zs"
    report = stage.zero_shot_seeds(
        str(frames), str(tmp_path / "classes.json"), str(out), progress=False
    )
    assert report["used"] == ["drv_0000", "drv_0001", "drv_0002"]
    assert [r["stem"] for r in report["rejected"]] == ["drv_blank"]
    assert "mostly void" in report["rejected"][0]["reason"]
    label = decode_label((out / "labels" / "drv_0000.png").read_bytes())
    conf = decode_label((out / "confidence" / "drv_0000.png").read_bytes())
    assert label[0, 0] == 0 and label[-1, -1] == 1 and label[32, 0] == 255  # gap = void
    assert conf[0, 0] == round(0.9 * 255) and conf[-1, -1] == round(0.6 * 255)
    assert conf[label == 255].max() == 0
    assert not (out / "labels" / "drv_blank.png").exists()
    assert (out / "rejected" / "drv_blank.png").exists()
    record = json.loads((out / "records" / "drv_0001.json").read_text())
    assert record["used"] and record["details"]["phrases"] == NAMES
    assert json.loads((out / "report.json").read_text())["used"] == report["used"]
    # a second run reads every record and labels nothing again
    calls = oracle.calls
    again = stage.zero_shot_seeds(
        str(frames), str(tmp_path / "classes.json"), str(out), progress=False
    )
    assert oracle.calls == calls and len(again["skipped"]) == 4
    assert again["used"] == report["used"] and again["rejected"] == report["rejected"]
    # a changed param (a manual phrase) relabels every frame
    params = ZeroShotSeedsParams(names={"road": ["street"]})
    stage.zero_shot_seeds(
        str(frames), str(tmp_path / "classes.json"), str(out), params, progress=False
    )
    assert oracle.calls == calls + 4 and oracle.asked[-1] == ["sky", "street", "car"]


def test_a_frame_that_becomes_unusable_loses_its_seed_files(frames, oracle, tmp_path):
    out = tmp_path / "zs"
    classes = str(tmp_path / "classes.json")
    stage.zero_shot_seeds(str(frames), classes, str(out), progress=False)
    strict = ZeroShotSeedsParams(min_mean_confidence=0.95)
    report = stage.zero_shot_seeds(str(frames), classes, str(out), strict, progress=False)
    assert report["used"] == [] and "low confidence" in report["rejected"][0]["reason"]
    assert not list((out / "labels").iterdir()) and not list((out / "confidence").iterdir())


def test_train_weights_pixels_by_confidence(frames, oracle, tmp_path):
    from tasks.train import train

    out = tmp_path / "zs"
    classes = str(tmp_path / "classes.json")
    stage.zero_shot_seeds(str(frames), classes, str(out), progress=False)
    params = load_params(write_params(tmp_path / "p.yaml", str(tmp_path / "root"), tmp_path))
    common = dict(
        images=str(frames),
        labels=str(out / "labels"),
        classes=classes,
        seeds=["drv_0000", "drv_0001"],
        model=params.model,
        settings=params.train,
        progress=False,
    )
    plain = train(out=str(tmp_path / "m0"), **common)
    weighted = train(out=str(tmp_path / "m1"), confidence=str(out / "confidence"), **common)
    assert (
        weighted["seeds"][0]["confidence_sha256"] and "confidence_sha256" not in plain["seeds"][0]
    )
    assert weighted["model_version"] != plain["model_version"]  # the weights changed the fit


def test_lam_train_never_samples_zero_weight_pixels(tiny_backbone):
    from lam.build import LamConfig, build_lam
    from lam.head_fit import _sample_pixels, build_views

    config = LamConfig(classes=TINY_CLASSES)
    model = build_lam(config, backbone=tiny_backbone)
    image, label = make_scene(3)
    weight = np.zeros(label.shape, np.float32)
    weight[label == 1] = 0.25  # only road pixels count, at a quarter
    (view,) = build_views(model, [image], [label], pixel_weights=[weight])
    import torch

    _, ids, w = _sample_pixels([view], 500, 255, torch.Generator().manual_seed(0), model.adapter)
    assert set(ids.tolist()) == {1} and torch.allclose(w, torch.full_like(w, 0.25))
    views = build_views(model, [image], [label], (0.5, 1.0), True, [weight])
    assert all(
        v.full_weight is not None and v.full_weight.shape == v.full_label.shape for v in views
    )
    with pytest.raises(LamflowError, match="pixel weights must be"):
        build_views(model, [image], [label], pixel_weights=[weight * 8])  # max 2.0


def test_nightly_bootstraps_the_seed_set_from_zero_shot_labels(frames, oracle, tmp_path):
    from lam.classes import ClassList
    from tasks.models import ensure_model
    from tasks.seed_set import add_seed, list_seeds, seed_set_fingerprint

    root = tmp_path / "root"
    seeds_dir = tmp_path  # classes.json lives here; images are the unlabeled frames
    params = load_params(
        write_params(
            tmp_path / "p.yaml",
            str(root),
            seeds_dir,
            pipeline={"seed_source": "zero_shot", "seed_images": str(frames), "seed_labels": ""},
            train={"seeds": []},
        )
    )
    result = ensure_model(str(root), params, progress=False)
    seeds = list_seeds(str(root / "seeds"))
    assert [s["stem"] for s in seeds] == ["drv_0000", "drv_0001", "drv_0002"]
    assert {s["source"] for s in seeds} == {"zero_shot"}
    assert all((root / "seeds" / "confidence" / f"{s['stem']}.png").exists() for s in seeds)
    report = json.loads(
        (root / "models" / result["model"].rsplit("/", 1)[-1] / "train_report.json").read_text()
    )
    assert all("confidence_sha256" in s for s in report["seeds"])
    # a reviewer's label replaces a zero-shot seed: its confidence map goes, the model changes
    before = seed_set_fingerprint(str(root / "seeds"))
    image, label = make_scene(1)
    png = (frames / "drv_0001.png").read_bytes()
    add_seed(
        str(root / "seeds"),
        "drv_0001",
        png,
        "png",
        label,
        ClassList.from_json(TINY_CLASSES),
        {"source": "labelstudio"},
    )
    assert not (root / "seeds" / "confidence" / "drv_0001.png").exists()
    assert seed_set_fingerprint(str(root / "seeds")) != before


def test_cli_names_the_missing_model_directory(frames, tmp_path, capsys):
    from cli.main import main

    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({"data": {"classes": str(tmp_path / "classes.json")}}))
    args = ["stage", "zero_shot_seeds", "--params", str(params), "--images", str(frames)]
    code = main([*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0
    assert "zero_shot_seeds.detector_dir" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_model_paths_are_checked_before_any_frame(tmp_path):
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "config.json").write_text('{"model_type": "owlv2"}')
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip"}')
    (tmp_path / "sam_dir").mkdir()
    (tmp_path / "sam_dir" / "config.json").write_text('{"model_type": "sam"}')
    det, clip, sam_dir = (str(tmp_path / n) for n in ("det", "clip", "sam_dir"))
    with pytest.raises(LamflowError, match=r"\(zero_shot_seeds\.sam\) needs .*; it is not set"):
        stage.check_models(ZeroShotSeedsParams(detector_dir=det))
    with pytest.raises(LamflowError, match="'/nope.pth' does not exist"):
        stage.check_models(ZeroShotSeedsParams(detector_dir=det, sam="/nope.pth"))
    stage.check_models(ZeroShotSeedsParams(detector_dir=det, sam=sam_dir))  # a SamModel dir
    with pytest.raises(LamflowError, match="expected model_type 'grounding-dino'"):
        stage.check_models(ZeroShotSeedsParams(detector_dir=clip, sam=sam_dir))
    stage.check_models(ZeroShotSeedsParams(backend="maskclip", clip_dir=clip))  # SAM optional
    with pytest.raises(LamflowError, match="needs a segment-anything .pth checkpoint;"):
        stage.check_models(ZeroShotSeedsParams(backend="maskclip", clip_dir=clip, sam=sam_dir))


def test_an_empty_class_list_fails_in_one_line(frames, tmp_path, capsys):
    from cli.main import main

    (tmp_path / "empty.json").write_text('{"classes": []}')
    params = tmp_path / "p.yaml"
    params.write_text("{}")
    code = main(
        [
            "stage",
            "zero_shot_seeds",
            "--params",
            str(params),
            "--images",
            str(frames),
            "--classes",
            str(tmp_path / "empty.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and "non-empty 'classes' list" in err and len(err.splitlines()) == 1


def test_record_key_follows_what_the_label_depends_on():
    from lam.classes import ClassList
    from lamflow.params import VocabularyParams

    classes = ClassList.from_json(TINY_CLASSES)
    base = ZeroShotSeedsParams(detector_dir="d", sam="s")
    key = stage.record_key("abc", base, VocabularyParams(), classes)
    # device changes no answer; an LLM that is not used is not part of the key
    assert (
        stage.record_key(
            "abc", base.model_copy(update={"device": "cuda"}), VocabularyParams(), classes
        )
        == key
    )
    assert (
        stage.record_key("abc", base, VocabularyParams(llm="openai", llm_url="u"), classes) != key
    )
    no_llm = base.model_copy(update={"use_llm": False})
    k1 = stage.record_key("abc", no_llm, VocabularyParams(llm="openai", llm_url="u"), classes)
    assert k1 == stage.record_key(
        "abc", no_llm, VocabularyParams(llm="openai", llm_url="v"), classes
    )
    assert stage.record_key("abd", base, VocabularyParams(), classes) != key


def test_an_undecodable_frame_is_rejected_not_a_crash(frames, oracle, tmp_path):
    (frames / "drv_bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "zs"
    report = stage.zero_shot_seeds(
        str(frames), str(tmp_path / "classes.json"), str(out), progress=False
    )
    bad = [r for r in report["rejected"] if r["stem"] == "drv_bad"]
    assert len(bad) == 1 and bad[0]["reason"].startswith("undecodable")
    assert "drv_bad" not in report["used"] and len(report["used"]) == 3
    assert not (out / "labels" / "drv_bad.png").exists()
