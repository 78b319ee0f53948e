"""Each QC check fails on the broken output it exists for (a clean drop passes them all).

One small drop is labeled once by the tiny model; every test corrupts a copy of it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lam.imageio import encode_png
from lamflow.params import AnnotateParams, QcParams
from tasks.annotate import annotate, write_manifest
from tasks.ingest import ingest
from tasks.qc import qc
from tests.pipeline.helpers import write_drop

FRAMES = 6
STEM = "d1_0002"  # the frame the per-frame tests break
LOOSE = QcParams(min_mean_confidence=0.0, max_low_confidence_fraction=1.0, max_drift=1.0)


@pytest.fixture(scope="module")
def labeled_root(tmp_path_factory: pytest.TempPathFactory, tiny_model: dict[str, Any]) -> Path:
    """ROOT with drop d1 (6 clean frames) ingested and labeled under ROOT/labels/d1."""
    root = tmp_path_factory.mktemp("qcroot")
    write_drop(str(root), "d1", FRAMES)
    ingest(str(root), "d1", progress=False)
    params = AnnotateParams(batch_size=2)
    annotate(tiny_model["model"], str(root / "drops/d1/images"), str(root / "labels/d1"), params)
    return root


class Drop:
    """A private copy of the labeled drop, with helpers to break it and to run QC on it."""

    def __init__(self, root: Path, model: str) -> None:
        self.root, self.model = root, model
        self.out = root / "labels/d1"
        self.history = str(root / "state/qc_history.jsonl")

    def qc(self, params: QcParams = LOOSE, history: str = "") -> dict[str, Any]:
        ingest_url = str(self.root / "drops/d1/ingest.json")
        return qc(str(self.out), ingest_url, self.model, "", params, history)

    def label(self, stem: str = STEM) -> np.ndarray:
        return np.asarray(Image.open(self.out / "labels" / f"{stem}.png"))

    def write_png(self, kind: str, array: np.ndarray, stem: str = STEM) -> None:
        (self.out / kind / f"{stem}.png").write_bytes(encode_png(array.astype(np.uint8)))

    def edit_record(self, stem: str = STEM, **fields: Any) -> None:
        url = self.out / "records" / f"{stem}.json"
        url.write_text(json.dumps({**json.loads(url.read_text()), **fields}))
        write_manifest(str(self.out))

    def set_label(self, label: np.ndarray, stem: str = STEM) -> None:
        """Replace a label and keep its record's class fractions consistent with it."""
        self.write_png("labels", label, stem)
        counts = np.bincount(label.reshape(-1), minlength=3)[:3] / label.size
        fractions = dict(zip(("sky", "road", "car"), (round(float(c), 5) for c in counts)))
        self.edit_record(stem, class_fractions=fractions)

    def set_confidence(self, conf: np.ndarray, stem: str = STEM) -> None:
        """Replace a confidence map and keep its record consistent with it."""
        self.write_png("confidence", conf, stem)
        mean, low = float(conf.mean()) / 255, float((conf < 128).mean())
        self.edit_record(stem, mean_confidence=round(mean, 4), low_confidence_fraction=low)

    def review(self) -> dict[str, list[str]]:
        return {r["stem"]: r["reasons"] for r in json.loads((self.out / "review.json").read_text())}

    def history_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.history).read_text().splitlines()]


@pytest.fixture
def drop(tmp_path: Path, labeled_root: Path, tiny_model: dict[str, Any]) -> Drop:
    shutil.copytree(labeled_root, tmp_path / "root")
    return Drop(tmp_path / "root", tiny_model["model"])


def _check(summary: dict[str, Any], column: str) -> dict[str, Any]:
    return next(c for c in summary["checks"] if c["column"] == column)


def _failed(summary: dict[str, Any]) -> set[str]:
    return {c["column"] for c in summary["checks"] if not c["success"]}


def test_a_clean_drop_passes_every_check(drop: Drop) -> None:
    summary = drop.qc()
    assert summary["status"] == "pass", [c for c in summary["checks"] if not c["success"]]
    columns = {c["column"] for c in summary["checks"]}
    assert columns >= {
        "label_decodes",
        "label_size_ok",
        "label_max_id",
        "confidence_decodes",
        "confidence_size_ok",
        "confidence_mean_error",
        "low_confidence_error",
        "class_fraction_error",
        "sha256_ok",
        "mean_confidence",
        "low_confidence_fraction",
        "top_class_fraction",
        "confidence_z",
        "low_confidence_z",
        "labeled+quarantined",
        "missing",
        "extra",
        "drift",
        "history_drift",
        "absent_seed_classes",
    }
    assert "void_fraction" not in columns and "fraction_sum" not in columns
    counts = [summary[k] for k in ("labeled", "quarantined", "ingested", "missing", "extra")]
    assert counts == [FRAMES, 0, FRAMES, 0, 0]
    assert drop.review() == {}
    assert abs(sum(summary["class_histogram"].values()) - 1) < 1e-3


def _truncate(drop: Drop, kind: str) -> None:
    path = drop.out / kind / f"{STEM}.png"
    path.write_bytes(path.read_bytes()[:40])


def _wrong_size_label(drop: Drop) -> None:
    # the record claims the wrong size too: the frame's size comes from the ingest manifest
    drop.set_label(drop.label()[::2, ::2])
    drop.edit_record(width=48, height=32)


def _id_beyond_classes(drop: Drop) -> None:
    label = drop.label().copy()
    label[:2, :2] = 7
    drop.write_png("labels", label)


def _confidence_disagrees(drop: Drop) -> None:
    drop.write_png("confidence", np.full((64, 96), 255))  # the record says ~0.94


def _record_low_fraction_disagrees(drop: Drop) -> None:
    drop.edit_record(low_confidence_fraction=0.5)


def _record_fractions_disagree(drop: Drop) -> None:
    drop.edit_record(class_fractions={"sky": 0.2, "road": 0.2, "car": 0.6})


def _wrong_size_confidence(drop: Drop) -> None:
    drop.write_png("confidence", np.full((32, 48), 240))


def _sha256_differs(drop: Drop) -> None:
    drop.edit_record(sha256="0" * 64)  # labeled from bytes other than the ingested ones


@pytest.mark.parametrize(
    ("corrupt", "column", "reason"),
    [
        (lambda d: _truncate(d, "labels"), "label_decodes", "label PNG missing or unreadable"),
        (lambda d: (d.out / "labels" / f"{STEM}.png").unlink(), "label_decodes", "missing"),
        (_wrong_size_label, "label_size_ok", "label PNG is 48x32, the frame 96x64"),
        (_id_beyond_classes, "label_max_id", "class id 7; valid ids are 0-2"),
        (lambda d: _truncate(d, "confidence"), "confidence_decodes", "confidence PNG"),
        (_wrong_size_confidence, "confidence_size_ok", "confidence PNG is 48x32"),
        (_confidence_disagrees, "confidence_mean_error", "confidence PNG mean 1.000"),
        (_record_low_fraction_disagrees, "low_confidence_error", "the record 50.0%"),
        (_record_fractions_disagree, "class_fraction_error", "class fractions differ"),
        (_sha256_differs, "sha256_ok", "labeled from other bytes: record sha256 000000000000"),
    ],
    ids=[
        "truncated-label",
        "missing-label",
        "label-wrong-size",
        "label-id-beyond-classes",
        "truncated-confidence",
        "confidence-wrong-size",
        "confidence-vs-record-mean",
        "confidence-vs-record-low-fraction",
        "label-vs-record-fractions",
        "sha256-vs-ingest",
    ],
)
def test_a_broken_frame_output_fails_its_hard_check(
    drop: Drop, corrupt: Callable[[Drop], Any], column: str, reason: str
) -> None:
    corrupt(drop)
    summary = drop.qc()
    check = _check(summary, column)
    assert summary["status"] == "fail" and check["severity"] == "hard"
    assert not check["success"] and check["unexpected"] == [STEM]
    assert any(reason in r for r in drop.review()[STEM]), drop.review()[STEM]
    assert set(drop.review()) == {STEM}


def test_an_undecodable_label_is_reported_once_not_by_every_check_that_needs_it(
    drop: Drop,
) -> None:
    _truncate(drop, "labels")
    assert _failed(drop.qc()) == {"label_decodes"}


def test_sizes_are_not_checked_when_ingest_recorded_none(drop: Drop) -> None:
    url = drop.root / "drops/d1/ingest.json"
    manifest = json.loads(url.read_text())  # as an older ingest wrote it without decoding
    manifest["entries"] = [{**e, "width": 0, "height": 0} for e in manifest["entries"]]
    url.write_text(json.dumps(manifest))
    summary = drop.qc()
    check = _check(summary, "label_size_ok")
    assert summary["status"] == "pass" and check["skipped"]
    assert check["note"].startswith(f"skipped: {FRAMES} frame(s) have no size in ")


def test_a_collapsed_frame_warns_and_goes_to_review(drop: Drop) -> None:
    drop.set_label(np.zeros((64, 96), dtype=np.uint8))  # all sky
    summary = drop.qc()
    assert summary["status"] == "warn" and _failed(summary) == {"top_class_fraction"}
    assert _check(summary, "top_class_fraction")["severity"] == "soft"
    assert drop.review()[STEM] == ["collapsed: sky covers 100.0% of the frame (max 95%)"]


def test_a_seed_class_absent_from_the_whole_drop_warns(drop: Drop) -> None:
    for i in range(FRAMES):
        stem = f"d1_{i:04d}"
        label = drop.label(stem).copy()
        label[label == 2] = 1  # no car anywhere
        drop.set_label(label, stem)
    summary = drop.qc()
    check = _check(summary, "absent_seed_classes")
    assert summary["status"] == "warn" and _failed(summary) == {"absent_seed_classes"}
    assert check["severity"] == "soft" and check["note"].startswith("car (seeds ")
    # a seed class rarer than qc.absent_min_seed_fraction (car: ~6% of the seeds) may be absent
    rare_ok = drop.qc(LOOSE.model_copy(update={"absent_min_seed_fraction": 0.1}))
    assert rare_ok["status"] == "pass"


def test_a_frame_far_less_confident_than_its_drop_is_an_outlier(drop: Drop) -> None:
    drop.set_confidence(np.full((64, 96), 100))  # mean 0.39, every pixel < 128
    summary = drop.qc()
    assert summary["status"] == "warn"
    assert _failed(summary) == {"confidence_z", "low_confidence_z"}
    assert _check(summary, "confidence_z")["unexpected"] == [STEM]
    reasons = drop.review()[STEM]
    assert reasons[0].startswith("confidence outlier: mean 0.392, robust z -")
    assert reasons[1].startswith("low-confidence outlier: 100.0% of pixels")
    # too few frames for a median/MAD: skipped, and said so
    few = drop.qc(LOOSE.model_copy(update={"outlier_min_frames": FRAMES + 1}))
    check = _check(few, "confidence_z")
    assert few["status"] == "pass" and check["skipped"] and "outlier_min_frames" in check["note"]


def test_history_drift_is_skipped_without_history_and_the_drop_is_recorded(drop: Drop) -> None:
    no_history = _check(drop.qc(), "history_drift")
    assert no_history["skipped"] and no_history["note"] == "skipped: no history given"
    summary = drop.qc(history=drop.history)
    check = _check(summary, "history_drift")
    assert summary["status"] == "pass" and summary["history_drift"] is None
    assert check["skipped"] and check["success"] and "no earlier drop" in check["note"]
    [line] = drop.history_lines()
    assert line["drive"] == "d1" and line["class_histogram"] == summary["class_histogram"]
    assert line["model_version"] == summary["model_version"] and line["time"]
    # a re-run replaces the drive's line, and never compares the drop with itself
    again = drop.qc(history=drop.history)
    assert _check(again, "history_drift")["skipped"] and len(drop.history_lines()) == 1


def _write_history(drop: Drop, histograms: list[dict[str, float]]) -> None:
    Path(drop.history).parent.mkdir(parents=True, exist_ok=True)
    lines = [
        {"drive": f"old{i}", "model_version": "m", "class_histogram": h, "time": "t"}
        for i, h in enumerate(histograms)
    ]
    Path(drop.history).write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_histogram_far_from_recent_drops_warns(drop: Drop) -> None:
    far = {"sky": 0.0, "road": 0.05, "car": 0.95}
    _write_history(drop, [far])
    summary = drop.qc(history=drop.history)
    check = _check(summary, "history_drift")
    assert summary["status"] == "warn" and _failed(summary) == {"history_drift"}
    assert check["severity"] == "soft" and not check["skipped"]
    assert summary["history_drift"] > 0.8 and "1 latest other drop" in check["note"]
    # a warned drop still enters the history (only failed ones do not)
    assert [x["drive"] for x in drop.history_lines()] == ["old0", "d1"]


def test_history_drift_uses_only_the_latest_history_drops(drop: Drop) -> None:
    close = drop.qc()["class_histogram"]
    far = {"sky": 0.0, "road": 0.0, "car": 1.0}
    _write_history(drop, [far, close, close])  # oldest first
    latest = drop.qc(LOOSE.model_copy(update={"history_drops": 2}), drop.history)
    assert latest["history_drift"] < 0.001 and latest["status"] == "pass"
    _write_history(drop, [far, close, close])
    every = drop.qc(LOOSE.model_copy(update={"history_drops": 3}), drop.history)
    assert every["history_drift"] > LOOSE.max_history_drift and every["status"] == "warn"


def test_a_failed_drop_is_not_added_to_the_history(drop: Drop) -> None:
    _sha256_differs(drop)
    assert drop.qc(history=drop.history)["status"] == "fail"
    assert not Path(drop.history).exists()


def test_a_missing_record_fails_the_accounting_columns(drop: Drop) -> None:
    (drop.out / "records" / f"{STEM}.json").unlink()
    write_manifest(str(drop.out))
    summary = drop.qc()
    counts = [summary[k] for k in ("labeled", "quarantined", "ingested", "missing", "extra")]
    assert counts == [FRAMES - 1, 0, FRAMES, 1, 0]
    assert summary["status"] == "fail" and _failed(summary) == {"labeled+quarantined", "missing"}
    assert _check(summary, "missing")["note"] == STEM
    assert drop.review() == {STEM: ["missing: ingested but never labeled"]}


def test_an_extra_record_fails_the_accounting_columns(drop: Drop) -> None:
    record = json.loads((drop.out / "records" / f"{STEM}.json").read_text())
    (drop.out / "records/d1_9999.json").write_text(json.dumps({**record, "stem": "d1_9999"}))
    write_manifest(str(drop.out))
    summary = drop.qc()
    counts = [summary[k] for k in ("labeled", "quarantined", "ingested", "missing", "extra")]
    assert counts == [FRAMES + 1, 0, FRAMES, 0, 1]
    assert summary["status"] == "fail" and _failed(summary) == {"labeled+quarantined", "extra"}
    assert drop.review() == {"d1_9999": ["extra: a record for a frame that was not ingested"]}


def test_stage_qc_takes_a_history_url(drop: Drop) -> None:
    from cli.main import main
    from cli.stages import stage_parser

    assert "--history" in stage_parser("qc").format_help()
    args = ["stage", "qc", "--labels", str(drop.out), "--model", drop.model]
    args += ["--ingest", str(drop.root / "drops/d1/ingest.json"), "--history", drop.history]
    params = drop.root / "params.yaml"  # the repo's params.yaml may hold others' new sections
    params.write_text("qc: {min_mean_confidence: 0.0, max_drift: 1.0}\n")
    assert main([*args, "--params", str(params)]) == 0
    assert [x["drive"] for x in drop.history_lines()] == ["d1"]


def test_a_drop_with_no_labeled_frame_fails(drop: Drop) -> None:
    for i in range(FRAMES):
        drop.edit_record(f"d1_{i:04d}", status="quarantined", reason="cannot decode")
    result = drop.qc()
    assert result["status"] == "fail" and result["labeled"] == 0
    check = next(c for c in result["checks"] if c["column"] == "labeled")
    assert not check["success"] and "no frame of 6 ingested was labeled" in check["note"]
