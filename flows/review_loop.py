"""The review loop's steps inside the nightly flow: pull, select + push, and the run's report.

Only composition: each step calls the stage tasks (`tasks/review_sync.py`,
`tasks/review_select.py`) and turns a review server that stays down into a reported
"skipped" step instead of a failed run. Labeling never waits on the review tool: the next run
pulls and pushes whatever this one could not (push records under ROOT/review/pushed say which
drops still wait).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import Task, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State, TaskRun

from lam.errors import LamflowError
from lamflow.labelstudio_api import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioUnavailable,
)
from lamflow.params import Params
from lamflow.storage import exists, join, read_bytes
from tasks.ingest import drop_url
from tasks.models import seed_sources
from tasks.review_select import SELECTION
from tasks.review_sync import pushed_url
from tasks.seed_set import seed_set_url

from .drop import thumbnail_markdown
from .stage_tasks import (
    review_pull_files_task,
    review_pull_task,
    review_push_files_task,
    review_push_task,
    review_select_task,
)

log = logging.getLogger(__name__)


def _retry_if_unavailable(task: Task[..., Any], run: TaskRun, state: State) -> bool:
    """Retry a review task when the server was unreachable or storage failed (OSError: s3fs's
    403/5xx/timeouts), never on a bad token or bad data: those need a person."""
    try:
        state.result()
    except (LabelStudioUnavailable, OSError):
        return True
    except Exception:  # noqa: BLE001 - any other failure is not worth a retry
        return False
    return False


def _with_retries(task: Task[..., Any], params: Params) -> Any:
    return task.with_options(
        retries=params.review.retries,
        retry_delay_seconds=params.review.retry_delay_seconds,
        retry_condition_fn=_retry_if_unavailable,
    )


def _skipped(step: str, exc: Exception) -> dict[str, Any]:
    """A review step that could not run. A server that stays down is routine (the next run
    catches up); anything else (a refused token, a missing LABEL_STUDIO_URL, bad data) needs a
    person, so the flow fails at the end of the run, after every drop is labeled (`fatal`)."""
    get_run_logger().warning("review %s skipped: %s", step, exc)
    return {
        "status": "skipped",
        "reason": str(exc),
        "fatal": not isinstance(exc, LabelStudioUnavailable),
    }


def pull_step(params: Params) -> dict[str, Any]:
    """Pull finished annotations into the seed set; {"status": "ok" | "skipped" | "off", ...}."""
    if params.review.backend == "none":
        return {"status": "off", "added": [], "rejected": [], "skipped": []}
    classes = seed_sources(params)["classes"]
    if params.review.backend == "files":
        files = review_pull_files_task(params.data.root, classes, params.review)
        return {"status": "ok", **files}
    try:
        result: dict[str, Any] = _with_retries(review_pull_task, params)(
            params.data.root, classes, params.review
        )
    except LamflowError as exc:
        return {**_skipped("pull", exc), "added": [], "rejected": [], "skipped": []}
    return {"status": "ok", **result}


def pending_pushes(root: str, drives: list[str]) -> list[str]:
    """Drops among `drives` whose review tasks were selected but never pushed."""
    return [d for d in drives if not exists(pushed_url(root, d))]


def push_step(
    params: Params, labeled: dict[str, dict[str, Any]], model: dict[str, Any]
) -> dict[str, Any]:
    """Select frames of each drop in `labeled` (drive -> label_drop summary) and push them.

    Returns {"status", "drops": {drive: push record}, "errors": {drive: reason}, "reason"}.
    A drop already pushed is left alone (review_push is idempotent by frame anyway). A server
    that is down stops the step (every later drop would fail the same way); an error of one
    drop (a frame gone, bad data) is reported and the other drops are still pushed.
    """
    review = params.review
    root = params.data.root
    if review.backend == "none" or review.budget_per_drop == 0:
        return {"status": "off", "drops": {}, "errors": {}}
    classes = seed_sources(params)["classes"]
    pushed: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if review.backend == "labelstudio":
        try:  # configured at all? (a missing variable would fail every drop the same way)
            LabelStudioClient.from_env()
        except LamflowError as exc:
            return {**_skipped("push", exc), "drops": pushed, "errors": errors}
    for drive, summary in labeled.items():
        if summary.get("qc") == "fail" and not summary.get("accepted"):
            continue
        if exists(pushed_url(root, drive)):
            continue
        selection = join(summary["labels"], SELECTION)
        try:
            if not exists(selection):
                review_select_task(
                    summary["labels"],
                    join(drop_url(root, drive), "images"),
                    summary.get("model", model["model"]),
                    selection,
                    review,
                    params.select_seeds,
                    seed_set_url(root),
                    embedding_cache(params),
                    progress=False,
                )
            if review.backend == "files":
                pushed[drive] = review_push_files_task(
                    root, drive, summary["labels"], classes, selection
                )
                continue
            pushed[drive] = _with_retries(review_push_task, params)(
                root, drive, summary["labels"], classes, review, selection
            )
        except (LabelStudioUnavailable, LabelStudioAuthError) as exc:  # same for every drop
            return {**_skipped("push", exc), "drops": pushed, "errors": errors}
        except Exception as exc:  # noqa: BLE001 - one drop's failure is reported, not fatal
            get_run_logger().warning("review push of drop %s failed: %s", drive, exc)
            errors[drive] = f"{type(exc).__name__}: {exc}"
            continue
        create_markdown_artifact(
            key=f"review-{drive}".lower().replace("_", "-").replace(".", "-"),
            markdown=drop_review_report(
                root, drive, pushed[drive], classes, params.pipeline.overlays_per_drop
            ),
            description=f"lamflow review tasks of drop {drive}",
        )
    if errors:
        reason = "; ".join(f"{d}: {e}" for d, e in sorted(errors.items()))
        return {
            "status": "partial",
            "reason": reason,
            "fatal": True,
            "drops": pushed,
            "errors": errors,
        }
    return {"status": "ok", "drops": pushed, "errors": errors}


def embedding_cache(params: Params) -> str:
    """Where frame embeddings are cached: `select_seeds.cache`, else ROOT/embeddings."""
    return params.select_seeds.cache or join(params.data.root, "embeddings")


def _overlay_thumb(image_url: str, label_url: str, palette: Any) -> str:
    """A pushed frame with its labels blended over it, as a small data-URI markdown image."""
    from lam.imageio import decode_image, decode_label, overlay

    image = decode_image(read_bytes(image_url), image_url)
    label = decode_label(read_bytes(label_url), label_url)
    return thumbnail_markdown(label_url.rsplit("/", 1)[-1], overlay(image, label, palette))


def tasks_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Pushed tasks as markdown: a compact table, then why each frame was chosen (as a list:
    reasons are too long for a table column in the Prefect UI)."""
    lines = ["| rank | frame | task | score |", "|---:|---|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row.get('rank', '')} | `{row['stem']}` | {row.get('task_id', '')} | "
            f"{row.get('score', '')} |"
        )
    lines.append("")
    lines += [f"- `{row['stem']}`: {'; '.join(row.get('reasons', []))}" for row in rows]
    return lines


def drop_review_report(
    root: str, drive: str, record: dict[str, Any], classes: str, overlays: int
) -> str:
    """Markdown of one drop's review push: each task, its score and why it was chosen, and
    overlays of the first `overlays` pushed frames (what the reviewer will correct)."""
    lines = [f"### Review tasks of drop `{drive}`", "", *tasks_markdown(record.get("tasks", []))]
    if record.get("already"):
        lines += ["", f"Already tasks (not pushed again): {len(record['already'])}."]
    return "\n".join([*lines, "", *pushed_overlays(root, {drive: record}, classes, overlays)])


def pushed_overlays(
    root: str, records: dict[str, dict[str, Any]], classes: str, limit: int
) -> list[str]:
    """Overlays (labels over frame) of the first `limit` pushed frames of `records`
    (drive -> push record), as markdown images: what the reviewer will correct."""
    from lamflow.storage import list_images
    from tasks.frame_sources import load_classes

    if limit <= 0 or not any(r.get("tasks") for r in records.values()):
        return []
    palette = load_classes(classes).palette()
    thumbs: list[str] = []
    for drive, record in records.items():
        frames = dict(list_images(join(drop_url(root, drive), "images")))
        for row in record.get("tasks", []):
            if len(thumbs) >= limit:
                return thumbs
            label = join(record["labels"], "labels", f"{row['stem']}.png")
            if row["stem"] in frames and exists(label):
                thumbs.append(_overlay_thumb(frames[row["stem"]], label, palette))
    return thumbs


def class_map_markdown(model: dict[str, Any]) -> list[str]:
    """Lines on a source-network model's class map (source -> target, where the seeds moved
    it) and its weights' licence; none for other models."""
    class_map, weights = model.get("class_map"), model.get("weights") or {}
    if not class_map:
        return []
    lines = [
        f"**Class map** ({class_map['taxonomy']} -> target, from {class_map['origin']}):",
        "",
        "| source class | target | row | after training |",
        "|---|---|---|---|",
    ]
    for row in class_map["rows"]:
        fitted = ", ".join(f"{k} {v:.2f}" for k, v in row.get("fitted", {}).items())
        lines.append(
            f"| {row['source_class']} | {row['target']} | {row['row_source']} | {fitted} |"
        )
    biases = class_map.get("biases") or {}
    if any(biases.values()):
        lines += [
            "",
            "**Bias per class** (from the seeds): "
            + ", ".join(f"{k} {v:+.2f}" for k, v in biases.items()),
        ]
    if weights:
        lines += ["", f"**Weights:** `{weights.get('file')}` ({weights.get('licence')})."]
    return [*lines, ""]


def loop_report(
    pull: dict[str, Any],
    before: str,
    model: dict[str, Any],
    relabeled: dict[str, dict[str, Any]],
    relabel_errors: dict[str, str],
    push: dict[str, Any],
    overlays: list[str] | None = None,
) -> str:
    """Markdown of what the review loop changed this run (the run's Prefect artifact), with
    `overlays` (markdown images of a few pushed frames) at the end."""
    lines = ["## Review loop", ""]
    if pull["status"] == "skipped":
        lines.append(f"**Pull skipped:** {pull['reason']} (the next run catches up).")
    elif pull["status"] == "ok":
        lines.append(
            f"**Seeds added:** {len(pull['added'])}, rejected {len(pull['rejected'])}, "
            f"cancelled/skipped tasks {len(pull['skipped'])}."
        )
        for seed in pull["added"][:20]:
            lines.append(
                f"- `{seed['stem']}` (drive {seed.get('drive')}, task {seed.get('task_id')}, "
                f"annotator {seed.get('annotator')})"
            )
        for bad in pull["rejected"][:20]:
            lines.append(f"- rejected `{bad['stem']}` (task {bad['task_id']}): {bad['reason']}")
    else:
        lines.append("Review backend: none.")
    after = model["model_version"]
    lines += [
        "",
        f"**Model:** `{before or '(none)'}` → `{after}`"
        + (f" (trained on {model.get('seeds', '?')} seeds)" if model.get("trained") else ""),
        "",
        *class_map_markdown(model),
        "**Drops relabeled:** "
        + (
            ", ".join(f"{d} (QC {s['qc']})" for d, s in sorted(relabeled.items()))
            if relabeled
            else "none"
        ),
        "",
    ]
    for drive, error in sorted(relabel_errors.items()):
        lines.append(f"- **not relabeled** `{drive}`: {error}")
    if push["status"] == "skipped":
        lines.append(f"**Push skipped:** {push['reason']} (the next run pushes these drops).")
    for drive, record in push.get("drops", {}).items():
        lines += [f"**Pushed from `{drive}`:**", "", *tasks_markdown(record.get("tasks", [])), ""]
    return "\n".join([*lines, *(overlays or [])])
