"""Stage `export`: publish a drop's labels in the chosen format, with the human review list.

Formats (`export.format`): `png` = the single-channel class-id PNGs as labeled; `color` = RGB
PNGs in the class palette, for people. Layout under `dest`:
    labels/STEM.png            one per labeled frame
    confidence/STEM.png        if export.include_confidence
    index.json                 drive, model version, format, classes, frames (stem, input sha256)
    review.json, review.csv    copied from QC: frames a human should check, with reasons
A frame already exported for the same model version, format and input sha256 is skipped, so
a re-run is cheap; exports of frames no longer labeled (gone from the drop) are removed.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from lam.artifact import CONFIG_FILE
from lam.classes import ClassList
from lam.imageio import decode_label, encode_png
from lamflow.params import ExportParams
from lamflow.storage import (
    exists,
    get_fs,
    join,
    read_bytes,
    remove_temporaries,
    safe_name,
    write_bytes_atomic,
    write_text_atomic,
)
from tasks.label_folder import read_manifest

log = logging.getLogger(__name__)


def export_dest(params: ExportParams, root: str, model_version: str, drive: str) -> str:
    """DEST/MODEL_VERSION/DRIVE_ID, DEST being `export.dest` or ROOT/exports when it is ""
    (the default): one folder per drop, so one drop's export never removes another's."""
    base = params.dest or join(root, "exports")
    return join(base, safe_name(model_version, "model version"), safe_name(drive))


def export(
    labels: str,
    model: str,
    dest: str,
    params: ExportParams | None = None,
    qc_dir: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Publish the labeled frames of the annotate output `labels` to `dest`.

    Args:
        labels: annotate output folder (labels/, confidence/, manifest.jsonl; qc review files).
        model: model directory (its config.json holds the class list and palette).
        dest: URL of the export folder.
        qc_dir: folder with QC's review.json/review.csv (default: `labels`, where QC puts them).
    Returns:
        {"dest", "format", "exported", "skipped", "review"}.
    """
    params = params or ExportParams()
    labeled = read_manifest(labels, status="labeled")
    config = json.loads(read_bytes(join(model, CONFIG_FILE)))
    classes = ClassList.from_json(config["classes"])
    palette = classes.palette()
    version = str(config.get("version", ""))
    index_url = join(dest, "index.json")
    previous = json.loads(read_bytes(index_url)) if exists(index_url) else {}
    reuse = previous.get("model_version") == version and previous.get("format") == params.format
    # A frame's export is reused only if it came from the same input bytes: a frame relabeled
    # because its bytes changed must not keep its old export under the new index.
    exported_sha = {f["stem"]: f.get("sha256") for f in previous.get("frames", [])} if reuse else {}
    before = {f["stem"] for f in previous.get("frames", [])}
    for gone in sorted(before - {r["stem"] for r in labeled}):
        for sub in ("labels", "confidence"):
            stale = join(dest, sub, f"{gone}.png")
            if exists(stale):
                fs, path = get_fs(stale)
                fs.rm(path)
                log.info("removed the export of %s: the frame is no longer labeled", gone)

    def _one(rec: dict[str, Any]) -> bool:
        stem = rec["stem"]
        target = join(dest, "labels", f"{stem}.png")
        if exported_sha.get(stem) == rec["sha256"] and exists(target):
            return False
        data = read_bytes(join(labels, "labels", f"{stem}.png"))
        if params.format == "color":
            data = encode_png(palette[decode_label(data, stem)])
        write_bytes_atomic(target, data)
        if params.include_confidence:
            conf = read_bytes(join(labels, "confidence", f"{stem}.png"))
            write_bytes_atomic(join(dest, "confidence", f"{stem}.png"), conf)
        return True

    bar = tqdm(total=len(labeled), desc="export", unit="frame", disable=not progress)
    written = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        for did in pool.map(_one, labeled):
            written += int(did)
            bar.update(1)
    bar.close()
    # Under the drop's lease (or a lone CLI run) no other write into `dest` is in progress: a
    # temporary file of an atomic write there was left by a killed export.
    for folder in (dest, join(dest, "labels"), join(dest, "confidence")):
        for name in remove_temporaries(folder):
            log.info("removed %s/%s, left by an interrupted write", folder, name)
    review: list[Any] = []
    qc_dir = qc_dir or labels
    for name in ("review.json", "review.csv"):
        src = join(qc_dir, name)
        if exists(src):
            write_bytes_atomic(join(dest, name), read_bytes(src))
    if exists(join(qc_dir, "review.json")):
        review = json.loads(read_bytes(join(qc_dir, "review.json")))
    else:
        log.warning("no QC review list in %s: run qc before export", qc_dir)
    index = {
        "model_version": version,
        "format": params.format,
        "classes": classes.to_json(),
        "frames": [{"stem": r["stem"], "sha256": r["sha256"]} for r in labeled],
        "review": len(review),
    }
    write_text_atomic(index_url, json.dumps(index, indent=1))
    return {
        "dest": dest,
        "format": params.format,
        "exported": written,
        "skipped": len(labeled) - written,
        "review": len(review),
    }
