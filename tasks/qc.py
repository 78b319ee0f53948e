"""Stage `qc`: a Great Expectations suite over per-frame statistics, plus per-drop checks.

Per frame (one row per labeled frame, from its record and its label PNG): decoded, label size =
frame size, class fractions in [0, 1] summing to 1, mean confidence, low-confidence fraction,
void fraction. Per drop (one row): every ingested frame accounted for (labeled + quarantined =
ingested) and the class histogram within `qc.max_drift` (total variation) of the seeds'.

Writes beside the labels (or into `out`): `qc.json` (everything), `qc_metrics.json` (flat
numbers for DVC), and `review.json` / `review.csv`: every frame a human should look at, with
the reasons. Status: "pass"; "warn" when only the soft per-frame thresholds (confidence, void)
fail; "fail" when a hard check fails (accounting, decode, size, fractions, drift).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from prefect import task

from lam.errors import LamflowError
from lam.imageio import decode_label
from lamflow.params import QcParams
from lamflow.storage import exists, join, read_bytes, write_text_atomic
from tasks.annotate import MANIFEST

log = logging.getLogger(__name__)
HARD = "hard"
SOFT = "soft"


def _frame_row(labels: str, rec: dict[str, Any], entry: dict[str, Any], n: int) -> dict[str, Any]:
    fractions = list(rec.get("class_fractions", {}).values()) or [0.0]
    row = {
        "stem": rec["stem"],
        "decode_ok": bool(entry.get("ok", False)),
        "size_match": False,
        "fraction_min": float(min(fractions)),
        "fraction_max": float(max(fractions)),
        "fraction_sum": float(sum(fractions)),
        "mean_confidence": float(rec.get("mean_confidence") or 0.0),
        "low_confidence_fraction": float(rec.get("low_confidence_fraction") or 0.0),
        "void_fraction": 1.0,
    }
    try:
        label = decode_label(read_bytes(join(labels, "labels", f"{rec['stem']}.png")), rec["stem"])
    except (FileNotFoundError, LamflowError):
        return row
    row["size_match"] = label.shape == (entry.get("height"), entry.get("width"))
    row["void_fraction"] = float((label >= n).mean())
    return row


def _suite(params: QcParams) -> list[tuple[str, Any]]:
    """(severity, expectation) pairs of the per-frame suite."""
    import great_expectations as gx

    e = gx.expectations
    return [
        (HARD, e.ExpectColumnValuesToBeInSet(column="decode_ok", value_set=[True])),
        (HARD, e.ExpectColumnValuesToBeInSet(column="size_match", value_set=[True])),
        (HARD, e.ExpectColumnValuesToBeBetween(column="fraction_min", min_value=0, max_value=1)),
        (HARD, e.ExpectColumnValuesToBeBetween(column="fraction_max", min_value=0, max_value=1)),
        (
            HARD,
            e.ExpectColumnValuesToBeBetween(column="fraction_sum", min_value=0.99, max_value=1.01),
        ),
        (
            SOFT,
            e.ExpectColumnValuesToBeBetween(
                column="mean_confidence", min_value=params.min_mean_confidence, max_value=1
            ),
        ),
        (
            SOFT,
            e.ExpectColumnValuesToBeBetween(
                column="low_confidence_fraction",
                min_value=0,
                max_value=params.max_low_confidence_fraction,
            ),
        ),
        (
            SOFT,
            e.ExpectColumnValuesToBeBetween(
                column="void_fraction", min_value=0, max_value=params.max_void_fraction
            ),
        ),
    ]


def _drop_suite(params: QcParams) -> list[tuple[str, Any]]:
    import great_expectations as gx

    e = gx.expectations
    return [
        (HARD, e.ExpectColumnPairValuesToBeEqual(column_A="accounted", column_B="ingested")),
        (
            HARD,
            e.ExpectColumnValuesToBeBetween(
                column="drift", min_value=0, max_value=params.max_drift
            ),
        ),
    ]


def _validate(name: str, rows: list[dict[str, Any]], suite: list[tuple[str, Any]]) -> list[dict]:
    """Run `suite` over `rows` with Great Expectations; one result dict per expectation."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas(name).add_dataframe_asset(f"{name}_stats")
        batch_def = asset.add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
        for _, exp in suite:
            gx_suite.add_expectation(exp)
        batch = batch_def.get_batch(batch_parameters={"dataframe": pd.DataFrame(rows)})
        result = batch.validate(
            gx_suite,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["stem"]},
        )
    severity = {_column(exp.configuration.kwargs): sev for sev, exp in suite}
    out = []
    for res in result.results:
        cfg = res.expectation_config
        if cfg is None:
            raise LamflowError(
                f"Great Expectations returned a result without its expectation: {res}"
            )
        column = _column(cfg.kwargs)
        bad = [str(i.get("stem")) for i in (res.result.get("unexpected_index_list") or [])]
        bounds = {
            k: cfg.kwargs[k] for k in ("min_value", "max_value", "value_set") if k in cfg.kwargs
        }
        out.append(
            {
                "expectation": cfg.type,
                "column": column,
                "severity": severity.get(column, HARD),
                "success": bool(res.success),
                "unexpected": bad,
                "bounds": bounds,
            }
        )
    return out


def _column(kwargs: Any) -> str:
    """The column an expectation checks ("A=B" for a column pair)."""
    if "column" in kwargs:
        return str(kwargs["column"])
    return f"{kwargs.get('column_A')}={kwargs.get('column_B')}"


def _histogram(records: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    totals = np.zeros(len(names))
    for rec in records:
        fr = rec.get("class_fractions", {})
        totals += [fr.get(n, 0.0) for n in names]
    s = totals.sum()
    return {n: round(float(v / s), 5) if s > 0 else 0.0 for n, v in zip(names, totals)}


def qc(
    labels: str,
    ingest: str,
    model: str,
    out: str = "",
    params: QcParams | None = None,
) -> dict[str, Any]:
    """Check the annotate output at `labels` against the ingest manifest at `ingest`.

    Args:
        labels: annotate output folder (labels/, records/, manifest.jsonl).
        ingest: URL of the drop's ingest.json.
        model: model directory (its train_report.json holds the seeds' class histogram).
        out: where to write qc.json, qc_metrics.json, review.json/csv (default: `labels`).
    Returns:
        the qc.json content: {"status", "frames", "labeled", "quarantined", "review",
        "mean_confidence", "class_histogram", "seed_histogram", "drift", "checks": [...]}.
    """
    params = params or QcParams()
    out = out or labels
    manifest_url = join(labels, MANIFEST)
    if not exists(manifest_url):
        raise LamflowError(f"no {MANIFEST} in {labels}: run annotate first")
    records = [json.loads(line) for line in read_bytes(manifest_url).decode().splitlines() if line]
    ingest_data = json.loads(read_bytes(ingest))
    entries = {e["stem"]: e for e in ingest_data["entries"]}
    report = json.loads(read_bytes(join(model, "train_report.json")))
    names = list(report.get("class_pixels", {}))
    if not names:
        raise LamflowError(f"{model}/train_report.json has no class_pixels")
    labeled = [r for r in records if r["status"] == "labeled"]
    quarantined = [r for r in records if r["status"] == "quarantined"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = list(
            pool.map(
                lambda r: _frame_row(labels, r, entries.get(r["stem"], {}), len(names)), labeled
            )
        )
    checks = _validate("frames", rows, _suite(params)) if rows else []
    by_stem = {row["stem"]: row for row in rows}
    hist = _histogram(labeled, names)
    seed_total = sum(report["class_pixels"].values()) or 1
    seed_hist = {n: round(report["class_pixels"][n] / seed_total, 5) for n in names}
    drift = round(0.5 * sum(abs(hist[n] - seed_hist[n]) for n in names), 5)
    accounted = {r["stem"] for r in records} & set(entries)
    drop_row = {
        "stem": ingest_data["drive"],
        "accounted": len(accounted) if len(records) == len(accounted) else -len(records),
        "ingested": len(entries),
        "drift": drift if labeled else 1.0,
    }
    checks += _validate("drop", [drop_row], _drop_suite(params))
    reasons: dict[str, list[str]] = {
        r["stem"]: [f"quarantined: {r['reason']}"] for r in quarantined
    }
    for stem in sorted(set(entries) - {r["stem"] for r in records}):
        reasons[stem] = ["missing: ingested but never labeled"]
    for chk in checks:
        if chk["column"] in ("accounted=ingested", "drift"):
            continue
        for stem in chk["unexpected"]:
            value = by_stem.get(stem, {}).get(chk["column"])
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            reasons.setdefault(stem, []).append(f"{chk['column']}={shown} outside {chk['bounds']}")
    failed = [c for c in checks if not c["success"]]
    status = (
        "fail" if any(c["severity"] == HARD for c in failed) else ("warn" if failed else "pass")
    )
    mean_conf = float(np.mean([r["mean_confidence"] for r in labeled])) if labeled else 0.0
    summary = {
        "status": status,
        "drive": ingest_data["drive"],
        "model_version": labeled[0]["model_version"] if labeled else "",
        "frames": len(entries),
        "labeled": len(labeled),
        "quarantined": len(quarantined),
        "review": len(reasons),
        "mean_confidence": round(mean_conf, 4),
        "drift": drift,
        "class_histogram": hist,
        "seed_histogram": seed_hist,
        "checks": checks,
    }
    review = [{"stem": s, "reasons": reasons[s]} for s in sorted(reasons)]
    write_text_atomic(join(out, "qc.json"), json.dumps(summary, indent=1))
    metrics = {k: summary[k] for k in ("frames", "labeled", "quarantined", "review", "drift")}
    metrics.update(mean_confidence=summary["mean_confidence"], passed=int(status != "fail"))
    write_text_atomic(join(out, "qc_metrics.json"), json.dumps(metrics, indent=1))
    write_text_atomic(join(out, "review.json"), json.dumps(review, indent=1))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["stem", "reasons"])
    for item in review:
        writer.writerow([item["stem"], "; ".join(item["reasons"])])
    write_text_atomic(join(out, "review.csv"), buf.getvalue())
    if status != "pass":
        log.warning(
            "qc %s for drop %s: %s", status, summary["drive"], [c["column"] for c in failed]
        )
    return summary


qc_task = task(name="qc")(qc)
