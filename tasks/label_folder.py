"""The folder `annotate` writes, as the stages after it read it.

Layout (tasks/annotate.py writes it):
    labels/STEM.png       class ids, same size as the frame
    confidence/STEM.png   uint8, 255 = certain
    records/STEM.json     one record per frame, written last (its presence means done)
    manifest.jsonl        every record, one line each, rebuilt at the end of a run
Torch-free, so QC, export and evaluate read labels without importing the model.
"""

from __future__ import annotations

import json
from typing import Any

from lam.errors import LamflowError
from lamflow.storage import exists, join, read_bytes, safe_name

MANIFEST = "manifest.jsonl"


def drop_labels_url(root: str, model_version: str, drive: str) -> str:
    """Where the nightly flow labels a drop: ROOT/labels/MODEL_VERSION/DRIVE_ID (both names
    checked), so labels of every model version stay side by side."""
    return join(root, "labels", safe_name(model_version, "model version"), safe_name(drive))


def label_pngs(folder: str) -> str:
    """The folder holding the label PNGs: `folder`/labels for an annotate output (it has a
    manifest or a labels/ subfolder), else `folder` itself (a plain folder of STEM.png)."""
    sub = join(folder, "labels")
    return sub if exists(join(folder, MANIFEST)) or exists(sub) else folder


def read_manifest(labels: str, status: str | None = None) -> list[dict[str, Any]]:
    """The records of `labels`/manifest.jsonl, in stem order as written; only those with this
    `status` ("labeled" | "quarantined") when given. LamflowError if there is no manifest
    (annotate has not run) or a line is not JSON (naming the line)."""
    url = join(labels, MANIFEST)
    if not exists(url):
        raise LamflowError(f"no {MANIFEST} in {labels}: run annotate first")
    records = []
    for number, line in enumerate(read_bytes(url).decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise LamflowError(f"{url} line {number} is not JSON: {exc}") from exc
    return [r for r in records if status is None or r.get("status") == status]
