"""lamflow as a Label Studio ML backend (`lamflow ml-backend`): the model half of the protocol
that lamflow/ml_backend.py serves.

* setup: the config's `<BrushLabels>` names must all be classes of the model (exact names);
  a config without a brush tag, or with a name the model lacks, is refused with a message
  naming it.
* predict: each task's frame is read as Label Studio serves it (its /data/upload/... and
  /data/local-files/?d=... URLs with the token in LABEL_STUDIO_API_KEY; http(s) and s3 URLs
  through lamflow.storage), decoded and labeled by the same `Annotator` and batching rule as
  `annotate` (frames of one size, `annotate.batch_size` at a time, in task order), so a
  prediction decodes to annotate's labels/STEM.png pixel for pixel. One brush region per
  class, `score` = the mean confidence of its pixels; the prediction's `score` is the frame's.
  A task whose frame cannot be read or decoded gets an item without "result" (LS logs it and
  stores no prediction for it); the others are answered.
* webhook: an annotation created or updated in a connected project becomes a seed of
  ROOT/seeds through `review_sync.pull_task`, the nightly review pull's own code (so an
  annotation delivered twice, or also pulled at night, is one seed). It is done on a
  background thread: LS waits only 1 s for a webhook. The task and its annotations are read
  back from Label Studio with our token, never taken from the webhook's body.
  `train_on_submit`: a new seed also retrains at once (in the background) and publishes the
  model to ROOT's pointer, which the backend then serves.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.formats.labelstudio import BrushTarget, brush_target, prediction_results
from lam.imageio import decode_image
from lam.predictor import Prediction
from lamflow.labelstudio_api import LabelStudioClient
from lamflow.params import Params
from lamflow.storage import read_bytes, safe_name
from tasks.frame_sources import load_classes
from tasks.ml_models import ModelFollower, ServedModel
from tasks.model_pointer import publish_model
from tasks.models import ensure_model, seed_sources
from tasks.review_sync import PulledFrame, drop_frame, pull_task

log = logging.getLogger(__name__)
READ_THREADS = 4  # frames read at once (waiting on Label Studio or storage, not on the CPU)
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


def match_config(label_config: str, served: ServedModel) -> BrushTarget:
    """The config's brush tag, every label of which is a class of the served model."""
    target = brush_target(label_config)
    names = served.config.class_list.names
    unknown = [n for n in target.labels if n not in names]
    if unknown:
        raise LamflowError(
            f"<BrushLabels name={target.from_name!r}> has label(s) {unknown} that model "
            f"{served.version} does not know; its classes are {list(names)}"
        )
    return target


def read_frame_url(url: str, client: LabelStudioClient | None) -> bytes:
    """Bytes of a task's image URL: Label Studio's own (a path, or under its URL) through
    `client`, http(s):// and s3:// through lamflow.storage. Local paths are refused (a task
    must not make the backend read its own disk)."""
    if client is not None and (url.startswith("/") or url.startswith(client.url + "/")):
        return client.download(url)
    if url.startswith("/"):
        raise LamflowError(
            f"{url} is served by Label Studio, but LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY "
            "were not set when the backend started"
        )
    if url.startswith(("http://", "https://", "s3://")):
        return read_bytes(url)
    raise LamflowError(
        f"cannot read image URL {url!r}: expected a Label Studio path, http(s):// or s3://"
    )


def _task_stem(task: dict[str, Any]) -> str:
    return f"task{task.get('id', '')}"


class LamflowBackend:
    """A lamflow model behind Label Studio's ML-backend protocol (see lamflow.ml_backend)."""

    def __init__(
        self,
        models: ModelFollower,
        params: Params,
        client: LabelStudioClient | None = None,
        root: str | None = None,
        train_on_submit: bool = False,
    ) -> None:
        self.models, self.params, self.client = models, params, client
        self.root, self.train_on_submit = root, train_on_submit
        self._events: queue.Queue[tuple[str, int, str]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._trainer: threading.Thread | None = None
        self._train_again = threading.Event()
        self.pulled: list[dict[str, Any]] = []  # outcomes of the webhook's pulls, newest last
        self.trainings: list[dict[str, Any]] = []  # results (or errors) of background trainings

    # -- protocol ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.models.status()

    def setup(self, label_config: str) -> str:
        served = self.models.current()
        match_config(label_config, served)
        return served.version

    def versions(self) -> list[str]:
        return list(self.models.seen)

    def predict(self, tasks: list[dict[str, Any]], label_config: str) -> dict[str, Any]:
        served = self.models.current()  # once: the whole answer comes from one version
        target = match_config(label_config, served)
        frames = self._frames(tasks, target)
        preds = self._predict(served, frames)
        results: list[dict[str, Any]] = []
        for task, frame, pred in zip(tasks, frames, preds):
            if pred is None:
                results.append({"model_version": served.version, "error": str(frame)})
                continue
            results.append(
                {
                    "result": prediction_results(
                        _task_stem(task),
                        pred.label,
                        pred.confidence,
                        served.config.class_list,
                        target,
                    ),
                    "score": round(pred.mean_confidence, 6),
                    "model_version": served.version,
                }
            )
        return {"results": results, "model_version": served.version}

    def webhook(self, event: dict[str, Any]) -> dict[str, Any]:
        action = str(event.get("action", ""))
        project = event.get("project")
        project_id = int(project["id"]) if isinstance(project, dict) else int(project or 0)
        config = str(project.get("label_config", "")) if isinstance(project, dict) else ""
        if action == "START_TRAINING":
            if self.root is None:
                return {"status": "ignored", "reason": "started without --root: no seed set"}
            self._events.put(("train", project_id, ""))
            self._ensure_worker()
            return {"status": "training"}
        if action not in ANNOTATION_ACTIONS:
            return {"status": "ignored", "action": action}
        if self.root is None:
            return {"status": "ignored", "reason": "started without --root: no seed set"}
        tasks = event.get("task")
        tasks = tasks if isinstance(tasks, list) else [tasks]
        ids = sorted({int(t["id"] if isinstance(t, dict) else t) for t in tasks if t})
        for task_id in ids:
            self._events.put(("pull", task_id, config))
        self._ensure_worker()
        return {"status": "queued", "tasks": ids}

    # -- predict -------------------------------------------------------------------------------
    def _frames(self, tasks: list[dict[str, Any]], target: BrushTarget) -> list[Any]:
        """Per task, its decoded (H, W, 3) uint8 frame, or the LamflowError that stopped it."""

        def one(task: dict[str, Any]) -> Any:
            try:
                url = (task.get("data") or {}).get(target.data_key)
                if not isinstance(url, str) or not url:
                    raise LamflowError(f"task data has no {target.data_key!r} image URL")
                return decode_image(read_frame_url(url, self.client), url)
            except (LamflowError, OSError, ValueError) as exc:
                where = f"task {task.get('id', '?')}"
                log.warning("%s: no prediction: %s", where, exc)
                return LamflowError(f"{where}: {exc}")

        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            return list(pool.map(one, tasks))

    def _predict(self, served: ServedModel, frames: list[Any]) -> list[Prediction | None]:
        """annotate's batching: consecutive frames of one size, `batch_size` at a time."""
        out: list[Prediction | None] = [None] * len(frames)
        batch: list[int] = []

        def flush() -> None:
            preds = served.annotator.predict([frames[i] for i in batch])
            for i, pred in zip(batch, preds):
                out[i] = pred
            batch.clear()

        for i, frame in enumerate(frames):
            if not isinstance(frame, np.ndarray):
                continue
            if batch and frames[batch[0]].shape != frame.shape:
                flush()
            batch.append(i)
            if len(batch) >= served.annotator.batch_size:
                flush()
        if batch:
            flush()
        return out

    # -- webhook worker -----------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="webhook", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            kind, ident, config = self._events.get()
            try:
                if kind == "pull":
                    self._pull(ident, config)
                else:
                    self._train()
            except Exception as exc:  # noqa: BLE001 - a worker thread must outlive one event
                log.exception("webhook %s %s failed", kind, ident)
                self.pulled.append({"task_id": ident, "status": "error", "reason": str(exc)})
            finally:
                self._events.task_done()

    def wait_idle(self) -> None:
        """Block until every queued webhook event is done (tests, and a clean shutdown)."""
        self._events.join()

    def _pull(self, task_id: int, config: str) -> None:
        if self.client is None:
            raise LamflowError("LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not set")
        task = self.client.get_task(task_id)
        project = int(task.get("project") or 0)
        classes = load_classes(seed_sources(self.params)["classes"])
        outcome = pull_task(
            self._root(),
            task,
            classes,
            project,
            self.params.review.point_radius,
            self._frame_reader(config),
        )
        self.pulled.append({"task_id": task_id, **outcome})
        log.info("webhook: task %d -> %s", task_id, outcome["status"])
        if outcome["status"] == "added" and self.train_on_submit:
            self._train()

    def _frame_reader(self, config: str) -> Callable[[dict[str, Any]], PulledFrame]:
        """Tasks the review push made (data.drive/frame/sha256) are read from ROOT/drops as
        the nightly pull reads them; any other task's image through Label Studio."""
        from_drop = drop_frame(self._root())
        key = brush_target(config).data_key if config else "image"

        def read(task: dict[str, Any]) -> PulledFrame:
            data = task.get("data") or {}
            if data.get("drive") and data.get("frame") and data.get("sha256"):
                return from_drop(task)
            url = data.get(key)
            if not isinstance(url, str) or not url:
                raise LamflowError(f"task data has no {key!r} image URL")
            raw = read_frame_url(url, self.client)
            suffix = "png" if raw.startswith(b"\x89PNG") else "jpg"
            stem = safe_name(f"ls{task.get('project', 0)}_task{task['id']}", "seed stem")
            return PulledFrame(stem, raw, suffix, url, {"image": url})

        return read

    def _train(self) -> None:
        """Retrain on the seed set in a background thread and publish the model (ROOT's
        pointer). One training at a time; seeds that arrive meanwhile train once more after."""
        self._train_again.set()
        if self._trainer is None or not self._trainer.is_alive():
            self._trainer = threading.Thread(target=self._train_loop, name="train", daemon=True)
            self._trainer.start()

    def _train_loop(self) -> None:
        while self._train_again.is_set():
            self._train_again.clear()
            try:
                model = ensure_model(self._root(), self.params, progress=False)
                publish_model(self._root(), model)
            except Exception as exc:  # noqa: BLE001 - reported; the next seed tries again
                log.exception("training on the seed set failed")
                self.trainings.append({"error": f"{type(exc).__name__}: {exc}"})
                continue
            self.trainings.append(model)
            log.info("retrained: model %s published", model["model_version"])

    def wait_trained(self, timeout: float | None = None) -> None:
        """Block until the background training (if any) is done (tests)."""
        if self._trainer is not None:
            self._trainer.join(timeout)

    def _root(self) -> str:
        if self.root is None:
            raise LamflowError("started without --root: there is no seed set")
        return self.root
