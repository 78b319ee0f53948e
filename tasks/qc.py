"""Stage `qc`: read a labeled drop's outputs back and check them with Great Expectations.

Nothing is checked against what it was computed from: the written label and confidence PNGs
are read back and compared with the ingest manifest, the class list and the frames' records.

Per frame (one row per labeled frame of the ingest manifest):
    hard  label_decodes, confidence_decodes: the PNG exists and decodes
    hard  label_size_ok, confidence_size_ok: PNG size = the ingested frame's width x height
    hard  label_max_id: every id < the number of classes
    hard  confidence_mean_error, low_confidence_error, class_fraction_error: the PNGs' mean
          confidence, fraction < 128 and class fractions = the record's (qc.record_tolerance)
    hard  sha256_ok: the record was made from the ingested bytes
    soft  mean_confidence, low_confidence_fraction: the record's, against fixed thresholds
    soft  top_class_fraction <= qc.max_class_fraction (collapse). Soft: a frame can really be
          nearly one class (facing a wall, behind a truck); a drop-wide collapse moves the
          drop's histogram, which the hard drift check catches
    soft  confidence_z, low_confidence_z: robust z-scores (median / MAD of the drop's frames)
          within qc.outlier_z: frames far less confident than the rest of their drop
Per drop (one row):
    hard  labeled+quarantined = ingested; missing = 0 (ingested, no record); extra = 0 (a
          record for a frame that was not ingested)
    hard  drift <= qc.max_drift: class histogram of the label PNGs vs the seeds' (total variation)
    soft  history_drift <= qc.max_history_drift: the same vs the mean of the last
          qc.history_drops drops in `history`. Soft: only drops that do not fail enter the
          history, so a hard check would freeze it at the first real change of scenery
    soft  absent_seed_classes = 0: seed classes (>= qc.absent_min_seed_fraction of the seed
          pixels) under qc.absent_fraction of the drop's pixels; rarer seed classes may be absent
A check that cannot run (no history yet, too few frames for outliers) is reported with
`skipped: true` and a `note`, never silently passed.

Writes beside the labels (or into `out`): `qc.json` (everything), `qc_metrics.json` (flat
numbers for DVC), and `review.json` / `review.csv`: every frame a human should look at, with
the reasons. Status: "fail" when a hard check fails, else "warn" when a soft one does, else
"pass". A drop that does not fail replaces its line in (or is appended to) `history`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.imageio import decode_label
from lamflow.params import QcParams
from lamflow.storage import join, read_bytes, write_text_atomic
from tasks.label_folder import read_manifest
from tasks.qc_expectations import HARD, drop_suite, frame_suite, validate
from tasks.qc_history import mean_histogram, read_history, write_history

log = logging.getLogger(__name__)
IO_THREADS = 4  # two PNG reads + decodes per frame
# Why a frame is on the review list, per failed per-frame check: formatted with the frame's
# row and the check's bounds.
_REASONS = {
    "label_decodes": "label PNG missing or unreadable: {label_error}",
    "label_size_ok": "label PNG is {label_size}, the frame {frame_size}",
    "label_max_id": "label PNG has class id {label_max_id}; valid ids are 0-{max_value}",
    "confidence_decodes": "confidence PNG missing or unreadable: {confidence_error}",
    "confidence_size_ok": "confidence PNG is {confidence_size}, the frame {frame_size}",
    "confidence_mean_error": "confidence PNG mean {confidence_mean:.3f}, the record's "
    "{mean_confidence:.3f}",
    "low_confidence_error": "confidence PNG has {confidence_low:.1%} of pixels < 128, the "
    "record {low_confidence_fraction:.1%}",
    "class_fraction_error": "label PNG class fractions differ from the record's by up to "
    "{class_fraction_error:.3f}",
    "sha256_ok": "labeled from other bytes: record sha256 {record_sha256}..., ingested "
    "{ingest_sha256}...",
    "mean_confidence": "mean confidence {mean_confidence:.3f} below {min_value}",
    "low_confidence_fraction": "{low_confidence_fraction:.1%} of pixels low-confidence "
    "(max {max_value:.0%})",
    "top_class_fraction": "collapsed: {top_class} covers {top_class_fraction:.1%} of the frame "
    "(max {max_value:.0%})",
    "confidence_z": "confidence outlier: mean {mean_confidence:.3f}, robust z {confidence_z:.1f} "
    "against the drop (limit {min_value})",
    "low_confidence_z": "low-confidence outlier: {low_confidence_fraction:.1%} of pixels, "
    "robust z {low_confidence_z:.1f} against the drop (limit {max_value})",
}


def _read_png(url: str, name: str) -> tuple[np.ndarray | None, str]:
    """(H, W) uint8 of a written PNG, or (None, why) when it is missing or does not decode.

    Other read errors (a storage outage) raise: they are retried, not reported as bad outputs.
    """
    try:
        return decode_label(read_bytes(url), name), ""
    except (FileNotFoundError, LamflowError) as exc:
        return None, str(exc)


def _frame_row(
    labels: str, rec: dict[str, Any], entry: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], np.ndarray]:
    """One frame's row of the per-frame suite, and its label PNG's pixels per class (n,) int.

    Columns computed from a PNG that did not decode are None (Great Expectations skips them:
    the decode check reports the frame once).
    """
    stem, n = rec["stem"], len(names)
    size = (int(entry.get("height") or 0), int(entry.get("width") or 0))
    known = all(size)  # no size: ingest could not parse the frame's header (or older ingest)
    row: dict[str, Any] = {
        "stem": stem,
        "frame_size": f"{size[1]}x{size[0]}" if known else None,
        "sha256_ok": bool(entry.get("sha256")) and rec.get("sha256") == entry.get("sha256"),
        "record_sha256": str(rec.get("sha256") or "-")[:12],
        "ingest_sha256": str(entry.get("sha256") or "-")[:12],
        "mean_confidence": float(rec.get("mean_confidence") or 0.0),
        "low_confidence_fraction": float(rec.get("low_confidence_fraction") or 0.0),
        "top_class": "",
    }
    counts = np.zeros(n, dtype=np.int64)
    label, row["label_error"] = _read_png(join(labels, "labels", f"{stem}.png"), f"{stem} label")
    row["label_decodes"] = label is not None
    row.update(dict.fromkeys(("label_size", "label_size_ok", "label_max_id"), None))
    row.update(class_fraction_error=None, top_class_fraction=None)
    if label is not None:
        all_counts = np.bincount(label.reshape(-1), minlength=n)
        counts, total, top = all_counts[:n], max(1, label.size), int(np.argmax(all_counts))
        recorded = rec.get("class_fractions") or {}
        error = counts / total - np.array([float(recorded.get(c, 0.0)) for c in names])
        row.update(
            label_size=f"{label.shape[1]}x{label.shape[0]}",
            label_size_ok=label.shape == size if known else None,
            label_max_id=int(label.max(initial=0)),
            class_fraction_error=float(np.abs(error).max(initial=0.0)),
            top_class_fraction=float(all_counts[top] / total),
            top_class=names[top] if top < n else f"id {top}",
        )
    conf, row["confidence_error"] = _read_png(
        join(labels, "confidence", f"{stem}.png"), f"{stem} confidence"
    )
    row["confidence_decodes"] = conf is not None
    row.update(dict.fromkeys(("confidence_size", "confidence_size_ok", "confidence_mean"), None))
    row.update(confidence_low=None, confidence_mean_error=None, low_confidence_error=None)
    if conf is not None:
        mean, low = float(conf.mean()) / 255.0, float((conf < 128).mean())
        row.update(
            confidence_size=f"{conf.shape[1]}x{conf.shape[0]}",
            confidence_size_ok=conf.shape == size if known else None,
            confidence_mean=mean,
            confidence_low=low,
            confidence_mean_error=_error(mean, rec.get("mean_confidence")),
            low_confidence_error=_error(low, rec.get("low_confidence_fraction")),
        )
    return row, counts


def _error(measured: float, recorded: Any) -> float:
    """|measured - recorded|; 1.0 (the largest) when the record lacks the value."""
    return 1.0 if recorded is None else abs(measured - float(recorded))


def _robust_z(values: np.ndarray, min_spread: float) -> np.ndarray:
    """(x - median) / max(1.4826 * MAD, min_spread): a z-score that outliers cannot skew.

    The floor keeps a drop whose frames agree to a hair from flagging a hair-width gap.
    """
    med = float(np.median(values))
    scale = max(1.4826 * float(np.median(np.abs(values - med))), min_spread)
    return (values - med) / scale if scale > 0 else np.zeros_like(values)


def _add_outlier_scores(rows: list[dict[str, Any]], params: QcParams) -> dict[str, str]:
    """Add confidence_z / low_confidence_z to `rows`; returns {column: note} of skipped ones."""
    skipped = {}
    stats = {"confidence_z": "mean_confidence", "low_confidence_z": "low_confidence_fraction"}
    for col, stat in stats.items():
        if len(rows) >= params.outlier_min_frames:
            values = np.array([row[stat] for row in rows])
            for row, z in zip(rows, _robust_z(values, params.outlier_min_spread)):
                row[col] = float(z)
        else:
            skipped[col] = (
                f"skipped: {len(rows)} labeled frame(s), fewer than qc.outlier_min_frames "
                f"({params.outlier_min_frames})"
            )
            for row in rows:
                row[col] = None
    return skipped


def _frame_rows(
    labels: str,
    records: list[dict[str, Any]],
    entries: dict[str, dict[str, Any]],
    names: list[str],
    params: QcParams,
) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, str], dict[str, str]]:
    """Read every labeled frame's outputs back (IO_THREADS at a time) -> (rows of the
    per-frame suite, the drop's pixels per class (n,), {column: note}, {column: note} of the
    checks that cannot run)."""
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        results = list(
            pool.map(lambda r: _frame_row(labels, r, entries[r["stem"]], names), records)
        )
    rows = [row for row, _ in results]
    pixels = np.sum([c for _, c in results], axis=0) if results else np.zeros(len(names))
    skipped = _add_outlier_scores(rows, params)
    # Frames whose header ingest could not parse (or manifests of an older ingest, which
    # recorded no size without its full decode check) have no size to check against.
    unsized = sum(row["frame_size"] is None for row in rows)
    note = f"{unsized} frame(s) have no size in the ingest manifest: not checked" if unsized else ""
    notes = dict.fromkeys(("label_size_ok", "confidence_size_ok"), note)
    if rows and unsized == len(rows):
        skipped.update({col: f"skipped: {note}" for col in notes})
    return rows, pixels, notes, skipped


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance of two histograms, in [0, 1]."""
    return round(0.5 * float(np.abs(a - b).sum()), 5)


def _review_reasons(
    quarantined: list[dict[str, Any]],
    missing: list[str],
    extra: list[str],
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
) -> dict[str, list[str]]:
    """{stem: human-readable reasons} of every frame a person should look at."""
    reasons = {r["stem"]: [f"quarantined: {r['reason']}"] for r in quarantined}
    for stem in missing:
        reasons.setdefault(stem, []).append("missing: ingested but never labeled")
    for stem in extra:
        reasons.setdefault(stem, []).append("extra: a record for a frame that was not ingested")
    by_stem = {row["stem"]: row for row in rows}
    for chk in checks:
        for stem in chk["unexpected"] if chk["column"] in _REASONS else []:
            text = _REASONS[chk["column"]].format(**by_stem[stem], **chk["bounds"])
            reasons.setdefault(stem, []).append(text)
    return reasons


def _write_outputs(out: str, summary: dict[str, Any], reasons: dict[str, list[str]]) -> None:
    """qc.json, qc_metrics.json, review.json and review.csv under `out`."""
    review = [{"stem": s, "reasons": reasons[s]} for s in sorted(reasons)]
    write_text_atomic(join(out, "qc.json"), json.dumps(summary, indent=1))
    metrics = {k: summary[k] for k in ("frames", "labeled", "quarantined", "review", "drift")}
    metrics.update(mean_confidence=summary["mean_confidence"])
    metrics.update(passed=int(summary["status"] != "fail"))
    write_text_atomic(join(out, "qc_metrics.json"), json.dumps(metrics, indent=1))
    write_text_atomic(join(out, "review.json"), json.dumps(review, indent=1))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["stem", "reasons"])
    for item in review:
        writer.writerow([item["stem"], "; ".join(item["reasons"])])
    write_text_atomic(join(out, "review.csv"), buf.getvalue())


def _no_frames_check(ingested: int) -> dict[str, Any]:
    """The hard check that stands for the per-frame suite when no frame was labeled: a drop
    whose every frame was quarantined has nothing to publish."""
    return {
        "expectation": "expect_labeled_frames",
        "column": "labeled",
        "severity": HARD,
        "success": False,
        "unexpected": [],
        "bounds": {"min_value": 1},
        "skipped": False,
        "note": f"no frame of {ingested} ingested was labeled: the per-frame checks had nothing "
        "to check",
    }


def qc(
    labels: str,
    ingest: str,
    model: str,
    out: str = "",
    params: QcParams | None = None,
    history: str = "",
) -> dict[str, Any]:
    """Check the annotate output at `labels` against the ingest manifest at `ingest`.

    Args:
        labels: annotate output folder (labels/, confidence/, records/, manifest.jsonl).
        ingest: URL of the drop's ingest.json.
        model: model directory; its train_report.json's `class_pixels` give the class list
            and the seeds' class histogram.
        out: where to write qc.json, qc_metrics.json, review.json/csv (default: `labels`).
        params: thresholds (params.yaml `qc`).
        history: JSON-lines file of earlier drops' class histograms, one line per drop that
            did not fail (e.g. ROOT/state/qc_history.jsonl); "" = no history check.
    Returns:
        the qc.json content: {"status", "drive", "model_version", "frames", "labeled",
        "quarantined", "ingested", "missing", "extra", "review", "mean_confidence", "drift",
        "history_drift", "class_histogram", "seed_histogram", "checks": [{"expectation",
        "column", "severity", "success", "unexpected", "bounds", "skipped", "note"}]}.
    """
    params = params or QcParams()
    out = out or labels
    records = read_manifest(labels)
    ingest_data = json.loads(read_bytes(ingest))
    drive = ingest_data["drive"]
    entries = {e["stem"]: e for e in ingest_data["entries"]}
    report = json.loads(read_bytes(join(model, "train_report.json")))
    names = list(report.get("class_pixels", {}))
    if not names:
        raise LamflowError(f"{model}/train_report.json has no class_pixels")
    labeled = [r for r in records if r["status"] == "labeled"]
    quarantined = [r for r in records if r["status"] == "quarantined"]
    recorded = {r["stem"] for r in records}
    missing, extra = sorted(set(entries) - recorded), sorted(recorded - set(entries))
    checked = [r for r in labeled if r["stem"] in entries]  # extra ones have no frame size
    rows, pixels, notes, skipped = _frame_rows(labels, checked, entries, names, params)
    if rows:
        checks = validate("frames", rows, frame_suite(params, len(names)))
    else:  # nothing to check per frame: said, and a drop with no label at all fails
        checks = [_no_frames_check(len(entries))]

    hist = pixels / pixels.sum() if pixels.sum() > 0 else np.zeros(len(names))
    seeds = np.array([float(report["class_pixels"][n]) for n in names])
    seeds = seeds / (seeds.sum() or 1.0)
    past = read_history(history) if history else []
    earlier = [e for e in past if e.get("drive") != drive][-params.history_drops :]
    mean_past = mean_histogram(earlier, names)
    drift = _tv(hist, seeds) if pixels.sum() > 0 else 1.0
    history_drift = None
    if mean_past is None:
        where = f"no earlier drop in {history}" if history else "no history given"
        skipped["history_drift"] = f"skipped: {where}"
    else:
        history_drift = _tv(hist, mean_past) if pixels.sum() > 0 else 1.0
    absent = [
        n
        for n, s, d in zip(names, seeds, hist)
        if s >= params.absent_min_seed_fraction and d < params.absent_fraction
    ]
    drop_row = {
        "stem": drive,
        "labeled": len(labeled),
        "quarantined": len(quarantined),
        "ingested": len(entries),
        "missing": len(missing),
        "extra": len(extra),
        "drift": drift,
        "history_drift": history_drift,
        "absent_seed_classes": len(absent),
    }
    checks += validate("drop", [drop_row], drop_suite(params, len(entries)))
    notes.update(
        history_drift=f"vs the mean of the {len(earlier)} latest other drop(s)",
        absent_seed_classes=", ".join(f"{n} (seeds {seeds[names.index(n)]:.1%})" for n in absent),
        missing=" ".join(missing[:20]),
        extra=" ".join(extra[:20]),
    )
    for chk in checks:
        chk["skipped"] = chk["column"] in skipped
        chk["note"] = skipped.get(chk["column"]) or notes.get(chk["column"]) or chk["note"]

    reasons = _review_reasons(quarantined, missing, extra, rows, checks)
    failed = [c for c in checks if not c["success"]]
    status = "fail" if any(c["severity"] == HARD for c in failed) else "warn" if failed else "pass"
    mean_conf = float(np.mean([r["mean_confidence"] for r in labeled])) if labeled else 0.0
    summary = {
        "status": status,
        "drive": drive,
        "model_version": labeled[0]["model_version"] if labeled else "",
        "frames": len(entries),
        **{k: drop_row[k] for k in ("labeled", "quarantined", "ingested", "missing", "extra")},
        "review": len(reasons),
        "mean_confidence": round(mean_conf, 4),
        "drift": drift,
        "history_drift": history_drift,
        "class_histogram": {n: round(float(v), 5) for n, v in zip(names, hist)},
        "seed_histogram": {n: round(float(v), 5) for n, v in zip(names, seeds)},
        "checks": checks,
    }
    _write_outputs(out, summary, reasons)
    if history and status != "fail":
        write_history(history, past, summary)
    if status != "pass":
        log.warning("qc %s for drop %s: %s", status, drive, [c["column"] for c in failed])
    return summary
