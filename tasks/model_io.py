"""A model directory by URL: `config.json` + `head.safetensors`, written weights first and
loaded once per process (a Dask worker reuses the model across the shards it runs)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from lam.artifact import CONFIG_FILE, WEIGHTS_FILE, model_from_files, model_to_files
from lam.build import LamConfig
from lam.errors import LamflowError
from lam.modeling.lam import LabelAnythingModel
from lam.predictor import Annotator
from lamflow.storage import join, read_bytes, write_bytes_atomic

# Per process, the few most recently used: a long-lived worker meets every retrained and
# per-drop adapted model, and each entry holds a model and its folded inference copy.
_CACHE_SIZE = 4
_MODEL_CACHE: OrderedDict[tuple[str, str], tuple[LabelAnythingModel, LamConfig]] = OrderedDict()
_ANNOTATORS: OrderedDict[tuple[str, str, str, int], Annotator] = OrderedDict()
_CACHE_LOCK = threading.Lock()


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
        return _remember(_MODEL_CACHE, key)


def load_annotator(
    url: str, device: str = "auto", batch_size: int = 4
) -> tuple[Annotator, LamConfig]:
    """The model at `url` wrapped for inference, built once per process for each (model
    version, device, batch size).

    Building an Annotator folds the backbone for inference (~0.8 s on 2 cores): a Dask worker
    would otherwise pay it again on every shard, and a short drop would pay it per run.
    """
    net, config = load_model(url)
    key = (url, config.version, device, int(batch_size))
    with _CACHE_LOCK:
        if key not in _ANNOTATORS:
            _ANNOTATORS[key] = Annotator(net, device=device, batch_size=batch_size)
        return _remember(_ANNOTATORS, key), config


def _remember(cache: OrderedDict, key: Any) -> Any:
    """cache[key], now the most recently used; the least recently used beyond _CACHE_SIZE go."""
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return cache[key]
