"""The model store: one model directory per seed set, `ROOT/models/SEED_KEY/`.

SEED_KEY hashes everything a trained model depends on (seed stems and the bytes of their frames
and labels, the class list, the model and train params), so "is there a model for the current
seeds?" is a single existence check, and changing any of them trains a new model next night.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from lam.artifact import CONFIG_FILE
from lam.errors import LamflowError
from lamflow.params import Params
from lamflow.storage import exists, find_by_stem, join, list_images, read_bytes, sha256_bytes
from tasks.train import train


def seed_sources(params: Params) -> dict[str, str]:
    """URLs of the seed frames, seed labels and classes.json (defaults: the CamVid train split)."""
    camvid = params.data.camvid
    return {
        "images": params.pipeline.seed_images or join(camvid, "train", "images"),
        "labels": params.pipeline.seed_labels or join(camvid, "train", "labels"),
        "classes": params.data.classes or join(camvid, "classes.json"),
    }


def seed_key(params: Params) -> str:
    """16 hex digits identifying the model the current seeds and params would train."""
    src = seed_sources(params)
    seeds = params.train.seeds
    if not seeds:
        raise LamflowError("train.seeds is empty: list seed frame stems in params.yaml")
    frames = dict(list_images(src["images"]))
    parts: list[Any] = [sha256_bytes(read_bytes(src["classes"]))]
    for stem in seeds:
        if stem not in frames:
            raise LamflowError(f"train.seeds: {stem!r} not found in {src['images']}")
        label = find_by_stem(src["labels"], stem)
        if label is None:
            raise LamflowError(f"train.seeds: {stem!r} has no label in {src['labels']}")
        parts.append(
            [stem, sha256_bytes(read_bytes(frames[stem])), sha256_bytes(read_bytes(label))]
        )
    parts.append(params.model.model_dump(mode="json"))
    parts.append(params.train.model_dump(mode="json"))
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())[:16]


def ensure_model(root: str, params: Params, progress: bool = True) -> dict[str, Any]:
    """Model for the current seeds under `root`, trained first if missing.

    Returns {"model": URL of the model directory, "model_version", "trained": bool,
    "class_pixels": seed class-pixel counts (the reference histogram for QC drift)}.
    """
    src = seed_sources(params)
    url = join(root, "models", seed_key(params))
    trained = False
    if not exists(join(url, CONFIG_FILE)):
        train(
            src["images"],
            src["labels"],
            src["classes"],
            list(params.train.seeds),
            url,
            params.model,
            params.train,
            progress=progress,
        )
        trained = True
    config = json.loads(read_bytes(join(url, CONFIG_FILE)))
    report_url = join(url, "train_report.json")
    class_pixels = (
        json.loads(read_bytes(report_url)).get("class_pixels", {}) if exists(report_url) else {}
    )
    return {
        "model": url,
        "model_version": str(config.get("version", "")),
        "trained": trained,
        "class_pixels": class_pixels,
    }


ensure_model_task = task(name="train", retries=1)(ensure_model)
