"""Sharded annotate, QC and export on a synthetic drop with bad frames (tiny trained model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lamflow.params import AnnotateParams, ExportParams, QcParams
from tasks.export import export
from tasks.ingest import ingest
from tasks.qc import qc
from tasks.shards import annotate_shard, busy_seconds, finish_annotate, plan_shards
from tests.pipeline.helpers import write_drop

LOOSE = QcParams(min_mean_confidence=0.0, max_low_confidence_fraction=1.0, max_drift=1.0)


def _label_drop(root: Path, model: dict[str, Any], n: int = 5) -> tuple[str, dict[str, Any]]:
    write_drop(str(root), "d1", n, bad=True)
    manifest = ingest(str(root), "d1", progress=False)
    out = str(root / "labels" / model["model_version"] / "d1")
    images = str(root / "drops/d1/images")
    for stems in plan_shards([e["stem"] for e in manifest["entries"]], 3):
        annotate_shard(model["model"], images, out, stems, AnnotateParams(batch_size=2))
    return out, manifest


def test_plan_shards_covers_every_stem_once() -> None:
    shards = plan_shards([f"f{i:03d}" for i in range(10)][::-1], 4)
    assert [len(s) for s in shards] == [4, 4, 2]
    assert sum(shards, []) == sorted(f"f{i:03d}" for i in range(10))


def test_busy_seconds_is_the_union_of_shard_intervals() -> None:
    assert busy_seconds([[0, 10], [5, 12], [20, 25], [21, 22]]) == 17
    assert busy_seconds([]) == 0


def test_bad_frames_are_quarantined_and_the_rest_labeled(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    out, manifest = _label_drop(tmp_path, tiny_model)
    counts = finish_annotate(out)
    assert counts["records"] == manifest["frames"] == 8
    assert counts["labeled"] == 5
    reasons = {q["stem"]: q["reason"] for q in counts["quarantined"]}
    assert set(reasons) == {"d1_bad_empty", "d1_bad_truncated", "d1_bad_corrupt"}
    assert all(reasons.values())
    label = np.asarray(Image.open(Path(out) / "labels/d1_0000.png"))
    assert label.shape == (64, 96) and label.max() <= 2
    # a shard made only of bad frames does not fail (the drop-level QC accounts for them)
    bad_only = annotate_shard(
        tiny_model["model"],
        str(tmp_path / "drops/d1/images"),
        str(tmp_path / "x"),
        ["d1_bad_empty", "d1_bad_corrupt"],
    )
    assert bad_only["labeled"] == 0 and len(bad_only["quarantined"]) == 2


def test_rerun_skips_finished_frames_and_never_rewrites_them(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    out, manifest = _label_drop(tmp_path, tiny_model)
    records = sorted((Path(out) / "records").iterdir())
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in records}
    stems = [e["stem"] for e in manifest["entries"]]
    again = annotate_shard(tiny_model["model"], str(tmp_path / "drops/d1/images"), out, stems)
    assert again["labeled"] == 0 and again["skipped"] == 8  # quarantined bytes are not retried
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in records}
    good = {k: v for k, v in before.items() if not k.startswith("d1_bad")}
    assert {k: after[k] for k in good} == good


def test_qc_passes_a_clean_drop_and_lists_bad_frames_for_review(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    out, _ = _label_drop(tmp_path, tiny_model)
    finish_annotate(out)
    ingest_url = str(tmp_path / "drops/d1/ingest.json")
    summary = qc(out, ingest_url, tiny_model["model"], params=LOOSE)
    assert summary["status"] == "pass", [c for c in summary["checks"] if not c["success"]]
    assert (summary["frames"], summary["labeled"], summary["quarantined"]) == (8, 5, 3)
    assert abs(sum(summary["class_histogram"].values()) - 1) < 1e-3
    review = json.loads((Path(out) / "review.json").read_text())
    assert {r["stem"] for r in review} == {"d1_bad_empty", "d1_bad_truncated", "d1_bad_corrupt"}
    assert "quarantined" in (Path(out) / "review.csv").read_text()
    metrics = json.loads((Path(out) / "qc_metrics.json").read_text())
    assert metrics["passed"] == 1 and metrics["labeled"] == 5

    strict = qc(out, ingest_url, tiny_model["model"], params=QcParams(min_mean_confidence=0.999))
    assert strict["status"] == "warn"  # soft thresholds only send frames to review
    flagged = {r["stem"] for r in json.loads((Path(out) / "review.json").read_text())}
    assert "d1_0000" in flagged


def test_qc_fails_when_a_frame_is_unaccounted_for(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    out, _ = _label_drop(tmp_path, tiny_model)
    (Path(out) / "records/d1_0001.json").unlink()
    finish_annotate(out)
    summary = qc(out, str(tmp_path / "drops/d1/ingest.json"), tiny_model["model"], params=LOOSE)
    assert summary["status"] == "fail"
    failed = [c["column"] for c in summary["checks"] if not c["success"]]
    assert failed == ["labeled+quarantined", "missing"]
    assert (summary["labeled"], summary["quarantined"], summary["ingested"]) == (4, 3, 8)
    assert (summary["missing"], summary["extra"]) == (1, 0)
    review = {r["stem"]: r["reasons"] for r in json.loads((Path(out) / "review.json").read_text())}
    assert review["d1_0001"] == ["missing: ingested but never labeled"]


@pytest.mark.parametrize("fmt", ["png", "color"])
def test_export_publishes_labels_and_the_review_list(
    tmp_path: Path, tiny_model: dict[str, Any], fmt: str
) -> None:
    out, _ = _label_drop(tmp_path, tiny_model)
    finish_annotate(out)
    qc(out, str(tmp_path / "drops/d1/ingest.json"), tiny_model["model"], params=LOOSE)
    dest = tmp_path / "export"
    params = ExportParams(format=fmt, include_confidence=True)
    result = export(out, tiny_model["model"], str(dest), params, progress=False)
    assert (result["exported"], result["review"]) == (5, 3)
    img = np.asarray(Image.open(dest / "labels/d1_0002.png"))
    assert img.shape == ((64, 96) if fmt == "png" else (64, 96, 3))
    assert (dest / "confidence/d1_0002.png").exists() and (dest / "review.csv").exists()
    index = json.loads((dest / "index.json").read_text())
    assert index["format"] == fmt and len(index["frames"]) == 5
    assert export(out, tiny_model["model"], str(dest), params, progress=False)["skipped"] == 5


def test_stage_qc_exits_nonzero_on_a_failed_qc_so_dvc_repro_stops(
    tmp_path: Path, tiny_model: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    out, _ = _label_drop(tmp_path, tiny_model)
    finish_annotate(out)
    args = ["stage", "qc", "--labels", out, "--ingest", str(tmp_path / "drops/d1/ingest.json")]
    args += ["--model", tiny_model["model"], "--set", "qc.min_mean_confidence=0"]
    args += ["--set", "qc.max_low_confidence_fraction=1"]
    assert main([*args, "--set", "qc.max_drift=1"]) == 0
    capsys.readouterr()
    assert main([*args, "--set", "qc.max_drift=0"]) == 1
    assert "qc failed (drift)" in capsys.readouterr().err
    assert json.loads((Path(out) / "qc.json").read_text())["status"] == "fail"
