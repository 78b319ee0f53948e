"""Which model the ML backend serves: a fixed model directory, or the one ROOT's model pointer
names (`ROOT/state/model.json`, published by the nightly flow), followed without a restart.

Every request asks `ModelFollower.current()` once and uses what it gets for all its tasks, so
one answer never mixes two versions. That call reads the pointer and the model's config.json
(two small GETs) and builds the model only when its version changed (`tasks.model_io`'s
per-process cache keeps the last few), under a lock, so concurrent requests build it once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from lam.artifact import CONFIG_FILE
from lam.build import LamConfig
from lam.errors import LamflowError
from lam.predictor import Annotator
from lamflow.ml_backend import ModelUnavailable
from lamflow.storage import join, read_bytes
from tasks.model_io import load_annotator
from tasks.model_pointer import model_pointer_url, published_model

log = logging.getLogger(__name__)
RETRY_FAILED_SECONDS = 30.0  # a model that failed to load is tried again after this long


@dataclass(frozen=True)
class ServedModel:
    """One loaded model: its directory's URL, version, inference wrapper and config."""

    url: str
    version: str
    annotator: Annotator
    config: LamConfig


class ModelFollower:
    """The model to serve: `model_dir` if given, else what ROOT's pointer names."""

    def __init__(
        self,
        model_dir: str | None = None,
        root: str | None = None,
        device: str = "auto",
        batch_size: int = 4,
    ) -> None:
        if (model_dir is None) == (root is None):
            raise ValueError("give exactly one of model_dir (a model directory) and root")
        self.model_dir, self.root = model_dir, root
        self.device, self.batch_size = device, batch_size
        self._lock = threading.Lock()
        self._served: ServedModel | None = None
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}
        self.seen: list[str] = []  # versions served so far, oldest first

    def resolve(self) -> tuple[str, str]:
        """(model directory URL, version) to serve now, without building anything.

        Raises ModelUnavailable naming what is missing.
        """
        if self.root is not None:
            try:
                pointer = published_model(self.root)
            except (LamflowError, OSError) as exc:
                raise ModelUnavailable(f"cannot read the model pointer: {exc}") from exc
            url = str(pointer.get("model") or "")
            if not url:
                raise ModelUnavailable(
                    f"no model published at {model_pointer_url(self.root)} yet: run "
                    "`lamflow nightly` (or `lamflow bootstrap`) on this ROOT first"
                )
        else:
            url = str(self.model_dir)
        try:
            version = str(json.loads(read_bytes(join(url, CONFIG_FILE))).get("version", ""))
        except FileNotFoundError as exc:
            raise ModelUnavailable(f"no model at {url}: {CONFIG_FILE} not found") from exc
        except (ValueError, OSError, AttributeError) as exc:
            raise ModelUnavailable(f"model at {url}: {CONFIG_FILE} unreadable ({exc})") from exc
        return url, version

    def current(self) -> ServedModel:
        """The model to serve now, built first if its version is new (blocking)."""
        url, version = self.resolve()
        served = self._served
        if served is not None and (served.url, served.version) == (url, version):
            return served
        with self._lock:
            served = self._served
            if served is not None and (served.url, served.version) == (url, version):
                return served
            failed = self._failed.get((url, version))
            if failed and time.monotonic() - failed[0] < RETRY_FAILED_SECONDS:
                raise ModelUnavailable(failed[1])
            try:
                annotator, config = load_annotator(url, self.device, self.batch_size)
            except (LamflowError, OSError, ValueError, RuntimeError) as exc:
                message = f"model {version or '?'} at {url} does not load: {exc}"
                self._failed[(url, version)] = (time.monotonic(), message)
                log.error("%s", message)
                raise ModelUnavailable(message) from exc
            self._failed.pop((url, version), None)
            self._served = ServedModel(url, config.version, annotator, config)
            if config.version not in self.seen:
                self.seen.append(config.version)
            log.info("serving model %s from %s", config.version, url)
            return self._served

    def status(self) -> dict[str, Any]:
        """For /health, within Label Studio's 1 s: the served version, building a newly
        published model in the background rather than here. ModelUnavailable when no model
        is loaded (none published, or it does not load)."""
        url, version = self.resolve()
        served = self._served
        if served is not None and (served.url, served.version) == (url, version):
            return {"model_version": served.version}
        failed = self._failed.get((url, version))
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_SECONDS:
            raise ModelUnavailable(failed[1])
        if not self._lock.locked():
            threading.Thread(target=self._load_quietly, name="model-load", daemon=True).start()
        if served is None:
            raise ModelUnavailable(f"model {version} at {url} is loading; ask again shortly")
        return {"model_version": served.version, "loading": version}

    def _load_quietly(self) -> None:
        try:
            self.current()
        except ModelUnavailable:
            pass  # recorded in _failed, reported by the next status()
