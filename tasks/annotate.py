"""Stage `annotate`: label every frame of a folder (or a shard of it) with a trained model.

Layout under `out`:
    labels/STEM.png       class ids, same size as the frame
    confidence/STEM.png   uint8, 255 = certain
    records/STEM.json     one record per frame (written last, atomically: its presence means done)
    manifest.jsonl        all records, one line each (rebuilt at the end of every run)
A record holds the input's sha256 and the model version, so a re-run skips frames that are
already labeled by this model from these bytes, and a frame is never written twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from lam.errors import LamflowError
from lam.imageio import decode_image, encode_jpeg, encode_png, overlay
from lam.predictor import Prediction
from lamflow.params import AnnotateParams
from lamflow.storage import (
    exists,
    join,
    list_dir,
    list_images,
    read_bytes,
    remove_temporaries,
    sha256_bytes,
    write_bytes_atomic,
)
from tasks.label_folder import MANIFEST
from tasks.model_io import load_annotator

log = logging.getLogger(__name__)
OUTPUT_FOLDERS = ("labels", "confidence", "overlays", "records")  # under `out`, one file a frame
# Threads for reads/writes (mostly waiting on storage) and for decode/encode (CPU). One CPU
# thread next to torch's: on 2 cores, two gave 0.78 of the bare backbone's rate (0.67-0.83
# over 8 passes) against 0.81 (0.77-0.90) with one (JPEG decode ~1.7 ms, PNG encodes ~0.9 ms
# per frame, so one thread keeps up with ~15 frames/s).
IO_THREADS = 4
CPU_THREADS = 1
_T = TypeVar("_T")
# Which failures quarantine a frame. 2: only bytes that cannot be decoded (1, unversioned, also
# quarantined read errors, so its quarantines are retried).
QUARANTINE_RULES = 2


@dataclass
class FrameRecord:
    """What happened to one frame (one line of manifest.jsonl)."""

    stem: str
    status: str  # "labeled" | "quarantined"
    sha256: str = ""
    model_version: str = ""
    width: int = 0
    height: int = 0
    mean_confidence: float | None = None
    low_confidence_fraction: float | None = None
    class_fractions: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""
    quarantine_rules: int = 0  # QUARANTINE_RULES of the code that quarantined it


@dataclass
class AnnotateSummary:
    out: str
    model_version: str
    frames: int
    labeled: int
    skipped: int
    quarantined: list[dict[str, str]]
    seconds: float
    frames_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record_url(out: str, stem: str) -> str:
    return join(out, "records", f"{stem}.json")


def _is_done(out: str, stem: str, sha: str, version: str) -> bool:
    url = _record_url(out, stem)
    if not exists(url):
        return False
    try:
        rec = json.loads(read_bytes(url))
    except (json.JSONDecodeError, FileNotFoundError):
        return False
    if rec.get("sha256") != sha or rec.get("model_version") != version:
        return False
    if rec.get("status") == "quarantined":
        # Quarantines of older code (which also quarantined read errors) are retried.
        return rec.get("quarantine_rules") == QUARANTINE_RULES
    return exists(join(out, "labels", f"{stem}.png"))


def _load(item: tuple[str, str]) -> tuple[str, bytes]:
    """Read one frame. A read error raises (s3fs maps 403/throttling/5xx to OSError): only
    bytes that cannot be decoded are quarantined, so Prefect's retries or a plain re-run
    finish a frame an outage kept from being read."""
    stem, url = item
    return stem, read_bytes(url)


def _prefetch(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], depth: int
) -> Iterator[Any]:
    """pool.map(fn, items) in order, but with at most `depth` items in flight or waiting."""
    it = iter(items)
    window: deque = deque(pool.submit(fn, item) for item in islice(it, max(1, depth)))
    while window:
        head = window.popleft()
        for item in islice(it, 1):
            window.append(pool.submit(fn, item))
        yield head.result()


def _stats(pred: Prediction, names: list[str]) -> dict[str, Any]:
    counts = pred.class_counts(len(names))
    total = max(1, int(counts.sum()))
    return {
        "mean_confidence": round(pred.mean_confidence, 4),
        "low_confidence_fraction": round(pred.low_confidence_fraction(), 4),
        "class_fractions": {n: round(int(c) / total, 5) for n, c in zip(names, counts)},
    }


def write_manifest(out: str) -> list[dict[str, Any]]:
    """Rebuild `out/manifest.jsonl` from the per-frame records; returns the records.

    Called once a run's writes are all done (the end of `annotate`, or after all its shards), so a
    temporary file of an atomic write still under `out` was left by a killed run: deleted.
    """
    for folder in (out, *(join(out, sub) for sub in OUTPUT_FOLDERS)):
        for name in remove_temporaries(folder):
            log.info("removed %s/%s, left by an interrupted write", folder, name)
    records = []
    for name in list_dir(join(out, "records")):
        if name.endswith(".json"):
            records.append(json.loads(read_bytes(join(out, "records", name))))
    records.sort(key=lambda r: r["stem"])
    write_bytes_atomic(join(out, MANIFEST), "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def annotate(
    model: str,
    images: str,
    out: str,
    params: AnnotateParams | None = None,
    stems: Iterable[str] | None = None,
    progress: bool = True,
    shard: bool = False,
) -> AnnotateSummary:
    """Label the frames in `images` (all, or only `stems`) with the model at `model`.

    A frame whose bytes cannot be decoded is quarantined (record with status and reason) and
    the rest are labeled; the run fails only if nothing could be labeled at all. A frame that
    cannot be *read* raises (a storage fault is retried, never quarantined).
    With `shard=True` this call is one shard of a larger run (tasks/shards.py): it does not
    rebuild manifest.jsonl (the caller does, once) and a shard whose frames are all quarantined
    is not an error (the drop-level QC accounts for them).
    """
    params = params or AnnotateParams()
    annotator, config = load_annotator(model, params.device, params.batch_size)
    names = list(config.class_list.names)
    palette = config.class_list.palette()
    frames = list_images(images)
    if stems is not None:
        wanted = set(stems)
        frames = [(s, u) for s, u in frames if s in wanted]
    if not frames:
        raise LamflowError(f"no frames (.jpg/.png) to annotate in {images}")
    started = time.perf_counter()
    labeled = skipped = 0
    quarantined: list[dict[str, str]] = []
    bar = tqdm(total=len(frames), desc="annotate", unit="frame", disable=not progress)

    def _write(
        stem: str, sha: str, image: np.ndarray, pred: Prediction, seconds: float, idx: int
    ) -> None:
        label_png, conf_png = _on_cpu(lambda: (encode_png(pred.label), encode_png(pred.confidence)))
        write_bytes_atomic(join(out, "labels", f"{stem}.png"), label_png)
        write_bytes_atomic(join(out, "confidence", f"{stem}.png"), conf_png)
        if idx < params.write_overlays:
            write_bytes_atomic(
                join(out, "overlays", f"{stem}.jpg"),
                _on_cpu(lambda: encode_jpeg(overlay(image, pred.label, palette))),
            )
        rec = FrameRecord(
            stem=stem,
            status="labeled",
            sha256=sha,
            model_version=config.version,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            seconds=round(seconds, 4),
            **_stats(pred, names),
        )
        write_bytes_atomic(_record_url(out, stem), json.dumps(asdict(rec)).encode())

    def _quarantine(stem: str, sha: str, reason: str) -> None:
        log.warning("quarantined %s: %s", stem, reason)
        quarantined.append({"stem": stem, "reason": reason})
        rec = FrameRecord(
            stem=stem,
            status="quarantined",
            sha256=sha,
            model_version=config.version,
            reason=reason,
            quarantine_rules=QUARANTINE_RULES,
        )
        write_bytes_atomic(_record_url(out, stem), json.dumps(asdict(rec)).encode())

    def _prepare(item: tuple[str, str]) -> tuple[str, str, np.ndarray | None, str]:
        """Read, hash, skip check and decode of one frame, in the I/O pool (off the model's
        thread). -> (stem, sha, image, outcome) with outcome "" (image ready), "skip", or the
        reason to quarantine."""
        stem, data = _load(item)
        sha = sha256_bytes(data)
        if params.skip_existing and _is_done(out, stem, sha, config.version):
            return stem, sha, None, "skip"
        try:
            return stem, sha, _on_cpu(lambda: decode_image(data, stem)), ""
        except LamflowError as exc:
            return stem, sha, None, str(exc) or "undecodable"

    # Reads and writes (S3 round trips) run IO_THREADS at a time; the CPU work inside them
    # (JPEG decode, PNG encode) goes through CPU_THREADS, so fewer threads compete with the
    # model's torch threads for the cores.
    cpu_pool = ThreadPoolExecutor(max_workers=CPU_THREADS)

    def _on_cpu(fn: Callable[[], _T]) -> _T:
        return cpu_pool.submit(fn).result()

    with cpu_pool, ThreadPoolExecutor(max_workers=IO_THREADS) as io_pool:
        # Prefetches reads and decodes while the model runs (a bounded window: decoded
        # frames are ~10x their JPEG bytes, a whole drop must never sit in memory).
        loaded = _prefetch(io_pool, _prepare, frames, depth=2 * params.batch_size + 2)
        pending_writes = []
        batch: list[tuple[str, str, np.ndarray]] = []
        idx = 0

        def _flush() -> None:
            nonlocal labeled, idx
            if not batch:
                return
            t0 = time.perf_counter()
            preds = annotator.predict([b[2] for b in batch])
            per = (time.perf_counter() - t0) / len(batch)
            for (stem, sha, image), pred in zip(batch, preds):
                pending_writes.append(io_pool.submit(_write, stem, sha, image, pred, per, idx))
                idx += 1
                labeled += 1
            bar.update(len(batch))
            batch.clear()

        for stem, sha, image, outcome in loaded:
            if outcome == "skip":
                skipped += 1
                bar.update(1)
                continue
            if image is None:
                _quarantine(stem, sha, outcome)
                bar.update(1)
                continue
            if batch and batch[0][2].shape != image.shape:
                _flush()
            batch.append((stem, sha, image))
            if len(batch) >= params.batch_size:
                _flush()
        _flush()
        for fut in pending_writes:
            fut.result()
    bar.close()
    if not shard:
        write_manifest(out)
    seconds = time.perf_counter() - started
    if labeled == 0 and skipped == 0 and not shard:
        raise LamflowError(
            f"no frame in {images} could be labeled ({len(quarantined)} quarantined)"
        )
    return AnnotateSummary(
        out=out,
        model_version=config.version,
        frames=len(frames),
        labeled=labeled,
        skipped=skipped,
        quarantined=quarantined,
        seconds=round(seconds, 3),
        frames_per_second=round(labeled / seconds, 3) if seconds > 0 else 0.0,
    )
