"""Shared I/O for stages: reading frames/labels/classes and saving/loading models by URL."""

from __future__ import annotations

import json
import threading

from lam.artifact import CONFIG_FILE, WEIGHTS_FILE, model_from_files, model_to_files
from lam.build import LamConfig
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.modeling.lam import LabelAnythingModel
from lamflow.storage import join, read_bytes, write_bytes_atomic

_MODEL_CACHE: dict[tuple[str, str], tuple[LabelAnythingModel, LamConfig]] = {}
_CACHE_LOCK = threading.Lock()


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


def load_model(url: str) -> tuple[LabelAnythingModel, LamConfig]:
    """Model directory at `url`, loaded once per process (workers reuse it across shards)."""
    try:
        config_bytes = read_bytes(join(url, CONFIG_FILE))
    except FileNotFoundError as exc:
        raise LamflowError(f"no model at {url}: {CONFIG_FILE} not found") from exc
    try:
        version = json.loads(config_bytes).get("version", "")
    except json.JSONDecodeError as exc:
        raise LamflowError(f"{join(url, CONFIG_FILE)} is not JSON: {exc}") from exc
    key = (url, version)
    with _CACHE_LOCK:
        if key not in _MODEL_CACHE:
            try:
                weights = read_bytes(join(url, WEIGHTS_FILE))
            except FileNotFoundError as exc:
                raise LamflowError(f"model at {url} lacks {WEIGHTS_FILE}") from exc
            _MODEL_CACHE[key] = model_from_files({CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights})
        return _MODEL_CACHE[key]
