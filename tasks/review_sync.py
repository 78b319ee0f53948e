"""Stages `review_push` and `review_pull`: the review loop's two trips to Label Studio.

`review_push`: the frames `review_select` chose become Label Studio tasks in the fleet's
project (created on first use from the class list: brush labels per class plus key points, so
a reviewer may paint or click, and a Data Manager view sorted by review priority). Each frame's
bytes are uploaded to Label Studio itself (so it works whatever ROOT is: a folder, S3, memory;
no URL of ours has to be reachable from the reviewer's browser), and the task carries
lamflow's labels as a prediction (brush RLE per class, model version, score = priority).
Idempotent by frame: a frame whose sha256 is already a task is not pushed again.

`review_pull`: every task with a finished annotation becomes a seed of ROOT/seeds: brush
strokes become class ids, clicks a small disc, everything else void. A cancelled or skipped
task is not a seed; an annotation already pulled is not pulled twice (an annotation edited
later is pulled again and replaces its seed); an annotation that fails validation (size
against the frame, ids against the class list, nothing labeled) is reported and left out.

State under ROOT/review/: `pushed/DRIVE.json` (what was pushed, task ids, scores) and
`pulled.json` (which annotation of which task is in the seed set). Server faults raise
`LabelStudioUnavailable`, which the flow retries and, if it persists, reports as a skipped
review step; nothing is lost, since the next run pushes and pulls what is missing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.formats.labelstudio import annotation_to_label, labeling_config, review_task
from lam.imageio import IMAGE_SUFFIXES, decode_image, decode_label
from lamflow.labelstudio_api import LabelStudioClient
from lamflow.params import ReviewParams
from lamflow.storage import (
    exists,
    find_by_stem,
    join,
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
from tasks.seed_set import add_seed, seed_set_url

log = logging.getLogger(__name__)


def pushed_url(root: str, drive: str) -> str:
    """ROOT/review/pushed/DRIVE.json: the record of a drop's push (absent = not pushed yet)."""
    return join(root, "review", "pushed", f"{safe_name(drive, 'drive id')}.json")


def _pulled_url(root: str) -> str:
    return join(root, "review", "pulled.json")


def _client(params: ReviewParams) -> LabelStudioClient:
    client = LabelStudioClient.from_env()
    client.timeout = params.timeout_seconds
    return client


def seed_stem(drive: str, stem: str) -> str:
    """A reviewed frame's name in the seed set: its stem, prefixed by the drive unless the stem
    already starts with it (frame names repeat across drives; CamVid's already carry it)."""
    return stem if stem.startswith(drive) else safe_name(f"{drive}_{stem}", "seed stem")


def review_push(
    root: str,
    drive: str,
    labels: str,
    classes: str,
    params: ReviewParams | None = None,
    selection: str = "",
) -> dict[str, Any]:
    """Push the frames chosen for review in drop `drive` to Label Studio as tasks.

    Args:
        root: the fleet's ROOT (frames are read from ROOT/drops/DRIVE/images).
        labels: the drop's annotate output (labels/STEM.png are the predictions).
        classes: classes.json URL. selection: review_selection.json; "" = beside `labels`.
    Returns:
        the push record also written to ROOT/review/pushed/DRIVE.json: {"drive", "project",
        "model_version", "tasks": [{stem, sha256, task_id, score, reasons}], "already": [...]}.
    """
    params = params or ReviewParams()
    started = time.perf_counter()
    doc = json.loads(read_bytes(selection or join(labels, SELECTION)))
    class_list = load_classes(classes)
    client = _client(params)
    project = client.ensure_project(params.project, labeling_config(class_list))
    client.ensure_view(project)
    existing = client.task_index(project)
    frames = dict(list_images(join(drop_url(root, drive), "images")))
    new_tasks, rows, already = [], [], []
    for row in doc["frames"]:
        stem, sha = row["stem"], row["sha256"]
        if sha in existing:
            already.append({"stem": stem, "sha256": sha, "task_id": existing[sha].get("id")})
            continue
        if stem not in frames:
            raise LamflowError(f"review_push: frame {stem} is no longer in drop {drive}")
        data = read_bytes(frames[stem])
        if sha256_bytes(data) != sha:
            raise LamflowError(
                f"review_push: frame {stem} of drop {drive} changed since it was labeled "
                f"(sha256 differs): relabel the drop first"
            )
        label_url = join(labels, "labels", f"{stem}.png")
        label = decode_label(read_bytes(label_url), label_url)
        image_url = client.upload_image(project, frames[stem].rsplit("/", 1)[-1], data)
        new_tasks.append(
            review_task(
                image_url,
                stem,
                drive,
                sha,
                label,
                class_list,
                str(doc.get("model_version", "")),
                float(row["score"]),
                list(row.get("reasons", [])),
            )
        )
        rows.append({k: row[k] for k in ("rank", "stem", "sha256", "score", "reasons")})
    ids = client.import_tasks(project, new_tasks) if new_tasks else []
    for row, task_id in zip(rows, ids):
        row["task_id"] = task_id
    record = {
        "drive": drive,
        "labels": labels,
        "project": project,
        "model_version": doc.get("model_version", ""),
        "pushed_at": utc_now(),
        "seconds": round(time.perf_counter() - started, 2),
        "tasks": rows,
        "already": already,
    }
    write_text_atomic(pushed_url(root, drive), json.dumps(record, indent=1))
    log.info(
        "pushed %d review task(s) of drop %s to project %d (%d already there)",
        len(rows),
        drive,
        project,
        len(already),
    )
    return record


def _read_pulled(root: str) -> dict[str, Any]:
    url = _pulled_url(root)
    state = json.loads(read_bytes(url)) if exists(url) else {}
    return {"pulled": state.get("pulled", {}), "skipped": state.get("skipped", {})}


def _annotation_key(ann: dict[str, Any]) -> str:
    """Identifies one version of an annotation: an edit changes `updated_at`."""
    return f"{ann.get('id')}@{ann.get('updated_at') or ann.get('created_at') or ''}"


def _latest(annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at")), a["id"]))


def _frame(root: str, drive: str, stem: str, sha: str) -> tuple[str, bytes]:
    url = find_by_stem(join(drop_url(root, drive), "images"), stem, IMAGE_SUFFIXES)
    if url is None:
        raise LamflowError(f"frame {stem} is not in drop {drive} any more")
    data = read_bytes(url)
    if sha and sha256_bytes(data) != sha:
        raise LamflowError(f"frame {stem} of drop {drive} changed since it was pushed")
    return url, data


@dataclass
class PulledFrame:
    """What a finished task's frame becomes in the seed set: its seed stem, its bytes, their
    format ("jpg" | "png"), where they were read (for messages) and provenance fields."""

    stem: str
    data: bytes
    suffix: str
    where: str
    provenance: dict[str, Any]


def pull_task(
    root: str,
    task: dict[str, Any],
    class_list: ClassList,
    project: int,
    point_radius: int,
    read_frame: Callable[[dict[str, Any]], PulledFrame],
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Label Studio task with its `annotations` -> a seed of ROOT/seeds, at most once per
    version of its latest annotation (the state in ROOT/review/pulled.json).

    The nightly `review_pull` and the ML backend's webhook (tasks/ml_backend.py) both come
    here, so an annotation seen by both is one seed. `read_frame(task)` finds the frame.
    `state`: pulled.json as the caller read it (updated here and written back); None reads it
    afresh (a caller that runs beside the nightly pull).
    Returns {"status": "added", "seed": provenance} | {"status": "unchanged"} |
    {"status": "skipped"} (cancelled: not a seed; "skipped before" once recorded) |
    {"status": "rejected", "reason"}.
    """
    task_id = str(task["id"])
    data = task.get("data", {})
    state = _read_pulled(root) if state is None else state
    ann = _latest(task.get("annotations") or [])
    if ann is None:  # cancelled or skipped: not a seed
        if task_id in state["skipped"]:
            return {"status": "skipped before"}
        state["skipped"][task_id] = utc_now()
        write_text_atomic(_pulled_url(root), json.dumps(state, indent=1))
        return {"status": "skipped"}
    key = _annotation_key(ann)
    if state["pulled"].get(task_id, {}).get("annotation") == key:
        return {"status": "unchanged"}
    try:
        frame = read_frame(task)
        height, width = decode_image(frame.data, frame.where).shape[:2]
        label = annotation_to_label(
            ann.get("result") or [], class_list, height, width, point_radius
        )
        record = add_seed(
            seed_set_url(root),
            frame.stem,
            frame.data,
            frame.suffix,
            label,
            class_list,
            {
                "source": "labelstudio",
                **frame.provenance,
                "project": project,
                "task_id": int(task["id"]),
                "annotation_id": ann.get("id"),
                "annotator": ann.get("completed_by"),
                "annotated_at": ann.get("updated_at") or ann.get("created_at"),
            },
        )
    except LamflowError as exc:
        reason = str(exc)
        earlier = state["pulled"].get(task_id, {})
        if earlier.get("status") == "seed":  # an edit that broke a good annotation
            reason += f" (the seed {earlier.get('seed')} from its earlier annotation is kept)"
        log.warning(
            "review task %s (%s): annotation not used as a seed: %s",
            task_id,
            data.get("frame", ""),
            reason,
        )
        state["pulled"][task_id] = {
            **({"seed": earlier["seed"]} if earlier.get("status") == "seed" else {}),
            "annotation": key,
            "status": "seed" if earlier.get("status") == "seed" else "rejected",
            "reason": reason,
        }
        write_text_atomic(_pulled_url(root), json.dumps(state, indent=1))
        return {"status": "rejected", "reason": reason}
    state["pulled"][task_id] = {"annotation": key, "status": "seed", "seed": record["stem"]}
    # after every seed: a crash mid-pull does not pull (and report) the same seeds again
    write_text_atomic(_pulled_url(root), json.dumps(state, indent=1))
    return {"status": "added", "seed": record}


def drop_frame(root: str) -> Callable[[dict[str, Any]], PulledFrame]:
    """`read_frame` for the tasks `review_push` made: data.frame of drop data.drive, read from
    ROOT/drops (never from Label Studio), checked against data.sha256."""

    def read(task: dict[str, Any]) -> PulledFrame:
        data = task.get("data", {})
        stem, drive = str(data.get("frame", "")), str(data.get("drive", ""))
        if not stem or not drive:
            raise LamflowError("task data lacks frame/drive (not pushed by lamflow)")
        url, image_bytes = _frame(root, drive, stem, str(data.get("sha256") or ""))
        return PulledFrame(
            seed_stem(drive, stem),
            image_bytes,
            url.rsplit(".", 1)[-1],
            url,
            {"drive": drive, "frame": stem},
        )

    return read


def review_pull(root: str, classes: str, params: ReviewParams | None = None) -> dict[str, Any]:
    """Turn finished Label Studio annotations into seeds of ROOT/seeds.

    Returns {"added": [seed provenance], "rejected": [{stem, task_id, reason}], "skipped":
    [task ids cancelled or skipped], "unchanged": n, "seconds"}.
    """
    params = params or ReviewParams()
    started = time.perf_counter()
    class_list = load_classes(classes)
    client = _client(params)
    project = client.ensure_project(params.project, labeling_config(class_list))
    read_frame = drop_frame(root)
    state = _read_pulled(root)
    added: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    skipped: list[int] = []
    unchanged = 0
    for t in client.finished_tasks(project):
        outcome = pull_task(root, t, class_list, project, params.point_radius, read_frame, state)
        if outcome["status"] == "added":
            added.append(outcome["seed"])
        elif outcome["status"] == "rejected":
            stem = str(t.get("data", {}).get("frame", ""))
            rejected.append({"stem": stem, "task_id": int(t["id"]), "reason": outcome["reason"]})
        elif outcome["status"] == "skipped":
            skipped.append(int(t["id"]))
        elif outcome["status"] == "unchanged":
            unchanged += 1
    write_text_atomic(_pulled_url(root), json.dumps(state, indent=1))
    log.info(
        "pulled %d seed(s) from Label Studio (%d rejected, %d skipped, %d already pulled)",
        len(added),
        len(rejected),
        len(skipped),
        unchanged,
    )
    return {
        "added": added,
        "rejected": rejected,
        "skipped": skipped,
        "unchanged": unchanged,
        "seconds": round(time.perf_counter() - started, 2),
    }
