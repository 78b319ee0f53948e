"""Stage `ingest`: register a sensor drop (list frames, sha256, size, decode check -> manifest).

A drop is `ROOT/drops/DRIVE_ID/images/*.{jpg,png}`. Ingest writes `ROOT/drops/DRIVE_ID/
ingest.json`: one entry per frame with its sha256, byte size, decoded size and, for a frame that
cannot be used, `ok: false` and the reason. Every later stage accounts for exactly these frames.
`add_drop` copies a folder of frames into the layout (how a drop "arrives" in demos and tests).
"""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image
from tqdm import tqdm

from lam.errors import LamflowError
from lamflow.params import IngestParams
from lamflow.storage import (
    exists,
    join,
    list_images,
    read_bytes,
    safe_name,
    sha256_bytes,
    write_bytes_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)
INGEST_MANIFEST = "ingest.json"


def drop_url(root: str, drive: str) -> str:
    """URL of drop `drive` under `root` (the drive id is checked: it cannot escape `drops/`)."""
    return join(root, "drops", safe_name(drive, "drive id"))


def _check_frame(stem: str, url: str, decode: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"stem": stem, "file": url.rsplit("/", 1)[-1], "ok": True}
    # A read error raises: a storage fault is retried (ingest_task's retries, or a re-run),
    # never recorded as an unusable frame; only bytes that cannot be decoded are.
    data = read_bytes(url)
    entry.update(sha256=sha256_bytes(data), size=len(data), width=0, height=0, reason="")
    if not data:
        return {**entry, "ok": False, "reason": "empty file (0 bytes)"}
    try:
        with Image.open(io.BytesIO(data)) as img:  # parses the header: format and size
            if decode:
                img.load()  # full decode: a truncated JPEG/PNG fails here, not at annotate time
            entry.update(width=img.width, height=img.height)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad bytes
        return {**entry, "ok": False, "reason": f"cannot decode: {exc}"}
    return entry


def ingest(
    root: str,
    drive: str,
    params: IngestParams | None = None,
    progress: bool = True,
    out: str = "",
) -> dict[str, Any]:
    """Register drop `drive` under `root`; writes and returns the ingest manifest.

    The manifest goes to `out`, by default ROOT/drops/DRIVE/ingest.json (where the nightly flow
    keeps it); dvc.yaml writes the sample drop's to data/, so git holds it.

    Returns:
        {"drive", "images", "frames", "ok", "bad", "bytes", "seconds", "entries": [...]}, each
        entry {"stem", "file", "ok", "sha256", "size", "width", "height", "reason"}; the file
        (ingest.json) holds the same without "seconds".
    Raises:
        FileNotFoundError if the drop has no images/ folder; LamflowError if it has no frames,
        or a frame's file name is not a safe object key.
    """
    params = params or IngestParams()
    base = drop_url(root, drive)
    images = join(base, "images")
    frames = list_images(images)
    if not frames:
        raise LamflowError(f"drop {drive!r} has no frames (.jpg/.png) in {images}")
    for stem, _ in frames:
        safe_name(stem, "frame name")
    started = time.perf_counter()
    bar = tqdm(total=len(frames), desc=f"ingest {drive}", unit="frame", disable=not progress)
    entries = []
    with ThreadPoolExecutor(max_workers=params.io_threads) as pool:
        for entry in pool.map(lambda f: _check_frame(f[0], f[1], params.decode_check), frames):
            if not entry["ok"]:
                log.warning("drop %s: frame %s unusable: %s", drive, entry["stem"], entry["reason"])
            entries.append(entry)
            bar.update(1)
    bar.close()
    bad = [e for e in entries if not e["ok"]]
    manifest = {
        "drive": drive,
        "images": images,
        "frames": len(entries),
        "ok": len(entries) - len(bad),
        "bad": len(bad),
        "bytes": sum(int(e["size"]) for e in entries),
        "seconds": round(time.perf_counter() - started, 3),
        "entries": entries,
    }
    # The file describes the drop, not the run: without `seconds`, re-ingesting the same frames
    # writes the same bytes, and DVC re-runs nothing downstream.
    on_file = {k: v for k, v in manifest.items() if k != "seconds"}
    write_text_atomic(out or join(base, INGEST_MANIFEST), json.dumps(on_file, indent=1))
    return manifest


def read_ingest(root: str, drive: str) -> dict[str, Any]:
    """The manifest `ingest` wrote for `drive` (LamflowError if the drop was never ingested)."""
    url = join(drop_url(root, drive), INGEST_MANIFEST)
    if not exists(url):
        raise LamflowError(f"drop {drive!r} is not ingested yet: no {url}")
    return dict(json.loads(read_bytes(url)))


def list_drops(root: str) -> list[str]:
    """Drive ids with an images/ folder under ROOT/drops (unsafe names are skipped, logged)."""
    from lamflow.storage import list_dir

    drives = []
    for name in list_dir(join(root, "drops")):
        try:
            safe_name(name, "drive id")
        except LamflowError as exc:
            log.warning("ignoring drop folder: %s", exc)
            continue
        if exists(join(root, "drops", name, "images")):
            drives.append(name)
    return drives


def add_drop(
    source: str, root: str, drive: str, repeat: int = 1, limit: int = 0, progress: bool = True
) -> int:
    """Copy the frames of folder `source` into `ROOT/drops/DRIVE/images/`; returns the count.

    `repeat` > 1 copies every frame that many times under new names (STEM_rK), which builds a
    large drop from a small folder for benchmarks; `limit` > 0 keeps only the first frames.
    """
    if repeat < 1:
        raise LamflowError(f"repeat must be >= 1, got {repeat}")
    frames = list_images(source)
    if limit:
        frames = frames[:limit]
    if not frames:
        raise LamflowError(f"no frames (.jpg/.png) in {source}")
    images = join(drop_url(root, drive), "images")
    jobs = []
    for stem, url in frames:
        suffix = url.rsplit(".", 1)[-1].lower()
        for k in range(repeat):
            name = stem if repeat == 1 else f"{stem}_r{k:03d}"
            jobs.append((url, join(images, f"{safe_name(name, 'frame name')}.{suffix}")))
    bar = tqdm(total=len(jobs), desc=f"add drop {drive}", unit="frame", disable=not progress)
    cache: dict[str, bytes] = {}

    def _copy(job: tuple[str, str]) -> None:
        src, dst = job
        data = cache.get(src)
        if data is None:
            data = cache[src] = read_bytes(src)
        write_bytes_atomic(dst, data)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in pool.map(_copy, jobs):
            bar.update(1)
    bar.close()
    return len(jobs)
