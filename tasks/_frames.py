"""Shared I/O for stages: reading frames/labels/classes and saving/loading models by URL."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from lam.artifact import CONFIG_FILE, WEIGHTS_FILE, model_from_files, model_to_files
from lam.build import LamConfig
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_image, decode_label
from lam.modeling.lam import LabelAnythingModel
from lamflow.storage import (
    find_by_stem,
    join,
    list_images,
    read_bytes,
    sha256_bytes,
    write_bytes_atomic,
)

_MODEL_CACHE: dict[tuple[str, str], tuple[LabelAnythingModel, LamConfig]] = {}
_CACHE_LOCK = threading.Lock()


def evenly_spaced(items: list[Any], max_items: int) -> list[Any]:
    """At most `max_items` of `items`, evenly spaced over the whole list (all when 0):
    a drop's frames are in time order, so this spreads a subsample over the whole drive."""
    if max_items <= 0 or len(items) <= max_items:
        return list(items)
    idx = np.linspace(0, len(items) - 1, max_items).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def load_classes(url: str) -> ClassList:
    """classes.json at `url` -> ClassList (LamflowError if missing or malformed)."""
    try:
        data = json.loads(read_bytes(url))
    except FileNotFoundError as exc:
        raise LamflowError(f"classes file not found: {url}") from exc
    except json.JSONDecodeError as exc:
        raise LamflowError(f"classes file {url} is not JSON: {exc}") from exc
    return ClassList.from_json(data)


def save_model(url: str, model: LabelAnythingModel, config: LamConfig) -> str:
    """Write `config.json` + `head.safetensors` under `url`; returns the model version."""
    files = model_to_files(model, config)
    # Weights first: a directory with a config but no weights never looks complete.
    write_bytes_atomic(join(url, WEIGHTS_FILE), files[WEIGHTS_FILE])
    write_bytes_atomic(join(url, CONFIG_FILE), files[CONFIG_FILE])
    return config.version


def load_model(url: str, fresh: bool = False) -> tuple[LabelAnythingModel, LamConfig]:
    """Model directory at `url`, loaded once per process (workers reuse it across shards).

    fresh=True returns a new instance outside the cache, for callers that change the model
    (adapt refits its head), so the shared instance is never altered.
    """
    try:
        config_bytes = read_bytes(join(url, CONFIG_FILE))
    except FileNotFoundError as exc:
        raise LamflowError(f"no model at {url}: {CONFIG_FILE} not found") from exc
    try:
        version = json.loads(config_bytes).get("version", "")
    except json.JSONDecodeError as exc:
        raise LamflowError(f"{join(url, CONFIG_FILE)} is not JSON: {exc}") from exc

    def build() -> tuple[LabelAnythingModel, LamConfig]:
        try:
            weights = read_bytes(join(url, WEIGHTS_FILE))
        except FileNotFoundError as exc:
            raise LamflowError(f"model at {url} lacks {WEIGHTS_FILE}") from exc
        return model_from_files({CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights})

    if fresh:
        return build()
    key = (url, version)
    with _CACHE_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = build()
        return _MODEL_CACHE[key]


def load_seed_frames(
    images: str, labels: str, stems: list[str], class_list: ClassList
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]]]:
    """Seed frames (H, W, 3) uint8, their labels (H, W) uint8 and provenance, by stem.

    Provenance is [{stem, image_sha256, label_sha256}], what train_report.json records.
    LamflowError names a missing frame or label, a size mismatch or an unknown class id.
    """
    frames = dict(list_images(images))
    seed_images, seed_labels, provenance = [], [], []
    for stem in stems:
        if stem not in frames:
            near = ", ".join(sorted(frames)[:5])
            raise LamflowError(f"seed {stem!r} not found in {images} (frames: {near}, ...)")
        label_url = find_by_stem(labels, stem)
        if label_url is None:
            raise LamflowError(f"seed {stem!r} has no label {stem}.png in {labels}")
        image_bytes, label_bytes = read_bytes(frames[stem]), read_bytes(label_url)
        image = decode_image(image_bytes, frames[stem])
        label = decode_label(label_bytes, label_url)
        if label.shape != image.shape[:2]:
            raise LamflowError(
                f"seed {stem!r}: label size {label.shape[1]}x{label.shape[0]} differs from "
                f"frame size {image.shape[1]}x{image.shape[0]}"
            )
        class_list.check_label(label, where=f"label {label_url}")
        seed_images.append(image)
        seed_labels.append(label)
        provenance.append(
            {
                "stem": stem,
                "image_sha256": sha256_bytes(image_bytes),
                "label_sha256": sha256_bytes(label_bytes),
            }
        )
    return seed_images, seed_labels, provenance
