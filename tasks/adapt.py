"""Stage `adapt` (optional): self-train a trained annotator on one drop's own frames.

Reads a model directory written by `train`, the seed frames it was trained on (their stems and
sha256 come from its train_report.json, so the refit uses exactly those seeds) and up to
`max_frames` evenly spaced frames of the drop, and writes a *new* model directory: the source
model is never modified. Only the drop's pixels are used, never any label of its frames (see
lam.adapt). The time of the whole step is reported on its own in `adapt_report.json`, apart
from training and labelling, because it is paid once per drop.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from lam.adapt import AdaptSettings, adapt_to_frames
from lam.artifact import CONFIG_FILE
from lam.errors import LamflowError
from lam.train import TrainSettings
from lamflow.params import AdaptParams
from lamflow.storage import exists, join, read_text, safe_name, sha256_bytes, write_text_atomic
from tasks.frame_sources import load_seed_frames, load_unlabeled_frames
from tasks.model_io import load_model, save_model
from tasks.train import TRAIN_REPORT

log = logging.getLogger(__name__)
ADAPT_REPORT = "adapt_report.json"


def _read_train_report(url: str) -> dict[str, Any]:
    try:
        return json.loads(read_text(join(url, TRAIN_REPORT)))
    except FileNotFoundError as exc:
        raise LamflowError(
            f"model at {url} has no {TRAIN_REPORT}: adapt needs the seeds it was trained on"
        ) from exc
    except json.JSONDecodeError as exc:
        raise LamflowError(f"{join(url, TRAIN_REPORT)} is not JSON: {exc}") from exc


def adapted_model_url(root: str, model_version: str, drive: str, settings: AdaptParams) -> str:
    """Where the nightly flow keeps `model_version` adapted to `drive` under these settings:
    ROOT/models/adapted/MODEL_VERSION/DRIVE/<hash of the adapt params>/ (one directory per
    combination, so a changed setting never reuses an adaptation made under another)."""
    key = sha256_bytes(json.dumps(settings.model_dump(), sort_keys=True).encode())[:8]
    return join(root, "models", "adapted", safe_name(model_version), safe_name(drive), key)


def _finished_report(
    model: str, images: str, out: str, settings: AdaptParams
) -> dict[str, Any] | None:
    """The adapt report already in `out` when it is this very adaptation (same source model
    version, frames folder and settings), so an interrupted or repeated run reuses it; else
    None. The report is written last, so its presence means the model files are complete."""
    if not exists(join(out, ADAPT_REPORT)):
        return None
    try:
        report = json.loads(read_text(join(out, ADAPT_REPORT)))
        source_version = json.loads(read_text(join(model, CONFIG_FILE))).get("version")
        written_version = json.loads(read_text(join(out, CONFIG_FILE))).get("version")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    same = (
        written_version == report.get("model_version")  # not a rewrite torn by a crash
        and report.get("source_version") == source_version
        and report.get("images") == images
        and report.get("settings") == settings.model_dump()
    )
    return dict(report) if same else None


def _drop_frames(
    images: str, exclude: set[str], max_frames: int, progress: bool
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Up to `max_frames` evenly spaced frames of `images` (seeds excluded), decoded.

    Returns (frames, their stems, stems skipped as undecodable). Frames not picked are not read;
    a read error raises (tasks.frame_sources.load_unlabeled_frames, shared with
    `train --unlabeled`).
    """
    frames, records, skipped = load_unlabeled_frames([images], max_frames, exclude, progress)
    return frames, [r["stem"] for r in records], skipped


def adapt(
    model: str,
    images: str,
    seed_images: str,
    seed_labels: str,
    out: str,
    settings: AdaptParams | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Self-train the model at `model` on the frames in `images`; write the result to `out`.

    Args:
        model: URL of a model directory from `train` (with its train_report.json).
        images: URL of the drop's frames (STEM.jpg/.png); seeds among them are left out.
        seed_images, seed_labels: URLs of the folders holding the seed frames and label PNGs
            named in the model's train_report.json; their sha256 must match what it recorded.
        out: URL of the new model directory (must differ from `model`). When it already
            holds this adaptation (same source version, frames and settings), it is reused.
        settings: the `adapt` section of params.yaml.
    Returns:
        the adapt report (also written to `out/adapt_report.json`): `seconds` of the whole
        step, frames used, pseudo-labelled pixels per class, source and new model versions.
    """
    settings = settings or AdaptParams()
    if out.rstrip("/") == model.rstrip("/"):
        raise LamflowError(f"adapt writes a new model directory: --out must differ from {model}")
    done = _finished_report(model, images, out, settings)
    if done is not None:
        log.info("adapt: %s already holds this adaptation (%s); reused", out, done["model_version"])
        return done
    started = time.perf_counter()
    net, config = load_model(model, fresh=True)  # refitted below: not the cached instance
    train_report = _read_train_report(model)
    source_version = config.version
    class_list = config.class_list
    recorded = train_report.get("seeds") or []
    stems = [row["stem"] for row in recorded]
    if not stems:
        raise LamflowError(f"{join(model, TRAIN_REPORT)} names no seed frames")
    seed_frames, seed_maps, provenance = load_seed_frames(
        seed_images, seed_labels, stems, class_list
    )
    for was, now in zip(recorded, provenance):
        for key in ("image_sha256", "label_sha256"):
            if was.get(key) and was[key] != now[key]:
                what, where = (
                    ("frame", seed_images) if key == "image_sha256" else ("label", seed_labels)
                )
                raise LamflowError(
                    f"seed {now['stem']!r}: the {what} in {where} is not the one the model was "
                    f"trained on (sha256 {now[key][:12]}... vs {was[key][:12]}...)"
                )
    frames, used, skipped = _drop_frames(images, set(stems), settings.max_frames, progress)
    train = dict(train_report.get("train") or {})
    train["scales"] = tuple(train.get("scales") or TrainSettings().scales)
    known = set(TrainSettings.__dataclass_fields__)
    lam_settings = AdaptSettings(
        **settings.model_dump(),
        train=TrainSettings(**{k: v for k, v in train.items() if k in known}),
    )
    log.info("adapting %s to %d frame(s) of %s", source_version, len(frames), images)
    result = adapt_to_frames(
        net, seed_frames, seed_maps, frames, class_list.ignore_index, lam_settings
    )
    version = save_model(out, net, config)
    write_text_atomic(join(out, TRAIN_REPORT), json.dumps(train_report, indent=2))
    report = {
        "model_version": version,
        "source_model": model,
        "source_version": source_version,
        "images": images,
        "frames": used,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
        "adapt_seconds": round(result.seconds, 2),
        "pseudo_pixels": result.pseudo_pixels,
        "pseudo_class_pixels": dict(zip(class_list.names, result.pseudo_class_pixels)),
        "settings": settings.model_dump(),
    }
    write_text_atomic(join(out, ADAPT_REPORT), json.dumps(report, indent=2))
    log.info("adapted %s -> %s in %.1fs", source_version, version, report["seconds"])
    return report
