"""Stages `review_push_files` / `review_pull_files`: the review loop without a server.

`review.backend: files`. Push writes the frames `review_select` chose as a Label Studio tasks
file ROOT/review/outbox/DRIVE.json (lamflow's labels as predictions), for a team to import into
its own tool; pull reads the team's Label Studio JSON exports dropped into ROOT/review/inbox
and turns finished annotations into seeds, with the same validation and provenance as the
server route (tasks/review_sync.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from lam.errors import LamflowError
from lamflow.params import ReviewParams
from lamflow.storage import (
    exists,
    join,
    list_dir,
    list_images,
    read_bytes,
    safe_name,
    sha256_bytes,
    write_text_atomic,
)
from lamflow.timestamps import utc_now
from tasks.frame_sources import load_classes
from tasks.ingest import drop_url
from tasks.review_select import SELECTION
from tasks.review_sync import pushed_url, seed_stem
from tasks.seed_set import add_seed, seed_set_url


def _frames_by_stem(root: str) -> dict[str, list[tuple[str, str]]]:
    """{frame stem: [(drive, URL), ...]} over every drop under ROOT/drops."""
    from tasks.ingest import list_drops

    out: dict[str, list[tuple[str, str]]] = {}
    for drive in list_drops(root):
        for stem, url in list_images(join(drop_url(root, drive), "images")):
            out.setdefault(stem, []).append((drive, url))
    return out


def review_pull_files(
    root: str, classes: str, params: ReviewParams | None = None
) -> dict[str, Any]:
    """`review.backend: files`: corrected files dropped into ROOT/review/inbox become seeds.

    Each Label Studio JSON export (of the tasks files written to ROOT/review/outbox, after the
    team annotated them in its own Label Studio) is read once per content (its sha256); only
    tasks with a finished annotation count, and frames are found by stem among the drops (a
    stem two drops share is refused as ambiguous). Same validation as the server route; a
    file that cannot be parsed is reported and read again once it changes. CVAT XML and
    Cityscapes zips are refused here: they carry no sign of which frames a person reviewed.
    """
    from tasks.review import read_review_file

    params = params or ReviewParams()
    started = time.perf_counter()
    class_list = load_classes(classes)
    inbox = join(root, "review", "inbox")
    state_url = join(root, "review", "pulled_files.json")
    done = json.loads(read_bytes(state_url)) if exists(state_url) else {}
    frames = _frames_by_stem(root)
    added: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    unchanged = 0
    for name in list_dir(inbox):
        url = join(inbox, name)
        sha = sha256_bytes(read_bytes(url))
        if done.get(name) == sha:
            unchanged += 1
            continue
        if not name.lower().endswith(".json"):
            # CVAT XML and Cityscapes zips cannot tell a reviewed frame from an untouched
            # pre-annotation: taken from the inbox, the model's own labels would become seeds.
            reason = "only Label Studio JSON exports are read here; import CVAT/Cityscapes "
            reason += "files with `lamflow review import` after checking them"
            rejected.append({"stem": "", "file": name, "reason": reason})
            done[name] = sha
            continue
        try:
            labels = read_review_file(url, class_list, annotated_only=True)
        except LamflowError as exc:
            rejected.append({"stem": "", "file": name, "reason": str(exc)})
            continue
        for stem, label in sorted(labels.items()):
            try:
                if stem not in frames:
                    raise LamflowError(f"no drop holds a frame {stem}")
                if len(frames[stem]) > 1:
                    drives = ", ".join(d for d, _ in frames[stem])
                    raise LamflowError(f"frame name {stem} is ambiguous: drops {drives}")
                drive, frame_url = frames[stem][0]
                record = add_seed(
                    seed_set_url(root),
                    seed_stem(drive, stem),
                    read_bytes(frame_url),
                    frame_url.rsplit(".", 1)[-1],
                    label,
                    class_list,
                    {"source": "files", "drive": drive, "frame": stem, "file": name},
                )
            except LamflowError as exc:
                rejected.append({"stem": stem, "file": name, "reason": str(exc)})
                continue
            added.append(record)
        done[name] = sha
    write_text_atomic(state_url, json.dumps(done, indent=1))
    return {
        "added": added,
        "rejected": rejected,
        "skipped": [],
        "unchanged": unchanged,
        "seconds": round(time.perf_counter() - started, 2),
    }


def review_push_files(
    root: str, drive: str, labels: str, classes: str, selection: str = ""
) -> dict[str, Any]:
    """`review.backend: files`: the chosen frames of drop `drive` as a Label Studio tasks file
    ROOT/review/outbox/DRIVE.json (predictions = lamflow's labels), for a team to import into
    its own tool; returns the push record, also written to ROOT/review/pushed/DRIVE.json."""
    from tasks.review import review_export

    doc = json.loads(read_bytes(selection or join(labels, SELECTION)))
    rows = [
        {k: r[k] for k in ("rank", "stem", "sha256", "score", "reasons")} for r in doc["frames"]
    ]
    out = join(root, "review", "outbox", f"{safe_name(drive, 'drive id')}.json")
    if rows:
        images = join(drop_url(root, drive), "images")
        stems = [r["stem"] for r in rows]
        review_export(
            images, out, classes, "labelstudio", labels=labels, stems=stems, progress=False
        )
    record: dict[str, Any] = {"drive": drive, "labels": labels, "out": out}
    record.update(pushed_at=utc_now(), tasks=rows, already=[])
    write_text_atomic(pushed_url(root, drive), json.dumps(record, indent=1))
    return record
