"""Stage `review_select`: after a drop is labeled, choose the frames a human should review.

Reads the annotate output (manifest.jsonl: each frame's mean confidence, share of
low-confidence pixels and predicted class fractions), QC's review.json (frames QC flagged, with
reasons), the model's train_report.json (seed pixels per class: what the seed set holds least
of) and the frames' embeddings (the cache `select_seeds` keeps, by frame sha256). Ranks with
`lam.seeds.review` and writes `review_selection.json` beside the labels: one row per chosen
frame with its score and the reasons it was chosen. Frames that already are seeds (same
sha256) are never chosen again.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.seeds.review import (
    class_rarity,
    coverage_scores,
    random_for_review,
    rank_for_review,
    uncertainty_scores,
)
from lamflow.params import ReviewParams, SelectSeedsParams
from lamflow.storage import exists, join, list_images, read_bytes, write_text_atomic
from tasks.label_folder import read_manifest
from tasks.seed_set import list_seeds
from tasks.select_seeds import embed_drop

log = logging.getLogger(__name__)
SELECTION = "review_selection.json"
SCHEMA = "lamflow.review_selection/1"


def _flags(labels: str) -> dict[str, list[str]]:
    url = join(labels, "review.json")
    if not exists(url):
        return {}
    return {row["stem"]: list(row.get("reasons", [])) for row in json.loads(read_bytes(url))}


def review_select(
    labels: str,
    images: str,
    model: str,
    out: str = "",
    params: ReviewParams | None = None,
    embed: SelectSeedsParams | None = None,
    seeds: str = "",
    cache: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Rank a labeled drop's frames for review and write the chosen ones to `out`.

    Args:
        labels: annotate output folder of the drop (QC's review.json beside it is read too).
        images: the drop's frames folder.
        model: the model directory that labeled it (its train_report.json has seed pixels).
        out: selection JSON URL; "" = `labels`/review_selection.json.
        params: the `review` section (budget_per_drop, strategy, weights).
        embed: the `select_seeds` section (embedding backbone and size, shared cache).
        seeds: seed set URL; its frames (by sha256) are excluded. "" = exclude nothing.
        cache: embedding cache URL; "" = `select_seeds.cache`, else beside `labels`.
    Returns:
        the document written: {"schema", "drive", "model_version", "strategy", "budget",
        "candidates", "seconds", "frames": [{rank, stem, sha256, score, reasons, ...}]}.
    """
    params = params or ReviewParams()
    embed = embed or SelectSeedsParams()
    out = out or join(labels, SELECTION)
    started = time.perf_counter()
    records = read_manifest(labels, status="labeled")
    seed_shas = {str(p.get("sha256")) for p in list_seeds(seeds)} if seeds else set()
    frames = dict(list_images(images))
    candidates = [r for r in records if r["stem"] in frames and r["sha256"] not in seed_shas]
    report = json.loads(read_bytes(join(model, "train_report.json")))
    names = list(report.get("class_pixels", {}))
    if not names:
        raise LamflowError(f"{model}/train_report.json has no class_pixels")
    flags = _flags(labels)
    if params.strategy == "random" or not candidates:
        # a different draw per drop (the folder names it), reproducible under review.seed
        draw = params.seed * 1_000_003 + zlib.crc32(images.encode())
        choices = random_for_review(len(candidates), params.budget_per_drop, draw)
    else:
        emb, _, _ = embed_drop(
            [(r["stem"], frames[r["stem"]]) for r in candidates],
            embed.model_copy(update={"start": "typical"}),
            cache or embed.cache or join(labels, "embeddings"),
            progress,
        )
        unc = uncertainty_scores(
            np.array([float(r.get("mean_confidence") or 0.0) for r in candidates]),
            np.array([float(r.get("low_confidence_fraction") or 0.0) for r in candidates]),
        )
        rarity = class_rarity(np.array([report["class_pixels"][n] for n in names], dtype=float))
        fractions = np.array(
            [[float(r.get("class_fractions", {}).get(n, 0.0)) for n in names] for r in candidates]
        )
        cov = coverage_scores(fractions, rarity)
        rare_names = [n for n, v in zip(names, rarity) if v >= 0.5]
        rare = [
            [n for n in rare_names if r.get("class_fractions", {}).get(n, 0.0) >= 0.001]
            for r in candidates
        ]
        choices = rank_for_review(
            emb,
            unc,
            cov,
            np.array([r["stem"] in flags for r in candidates]),
            params.budget_per_drop,
            uncertainty_weight=params.uncertainty_weight,
            coverage_weight=params.coverage_weight,
            dedupe_threshold=params.dedupe_threshold,
            rare_classes=rare,
            flag_reasons=[flags.get(r["stem"], []) for r in candidates],
        )
    chosen = []
    for c in choices:
        rec = candidates[c.index]
        chosen.append(
            {
                "rank": c.rank,
                "stem": rec["stem"],
                "sha256": rec["sha256"],
                "score": c.score,
                "uncertainty": c.uncertainty,
                "coverage": c.coverage,
                "flagged": c.flagged,
                "mean_confidence": rec.get("mean_confidence"),
                "low_confidence_fraction": rec.get("low_confidence_fraction"),
                "reasons": c.reasons,
            }
        )
    doc = {
        "schema": SCHEMA,
        "labels": labels,
        "images": images,
        "model_version": records[0]["model_version"] if records else "",
        "strategy": params.strategy,
        "budget": params.budget_per_drop,
        "candidates": len(candidates),
        "seconds": round(time.perf_counter() - started, 2),
        "frames": chosen,
    }
    write_text_atomic(out, json.dumps(doc, indent=1))
    log.info("chose %d of %d frame(s) for review -> %s", len(chosen), len(candidates), out)
    return doc
