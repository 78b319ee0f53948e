"""Flows `nightly` and `bootstrap`: every new sensor drop labeled, checked and exported.

`nightly`, one run per ROOT at a time (a ROOT lease), in order:
  1. pull: finished Label Studio annotations become seeds of ROOT/seeds (`review.backend`);
  2. train: a model for the current seed set (trained only if the set changed);
  3. relabel: drops labeled by an older model version, per `review.backfill`, written under
     the new version (the old labels stay);
  4. label the new drops under ROOT/drops: per drop, under its lease, ingest -> adapt (only
     with `pipeline.adapt_per_drop`) -> annotate (one task run per shard on the Dask cluster)
     -> qc -> export, with a markdown artifact per drop;
  5. push: choose each new drop's review frames and push them as Label Studio tasks;
and a `review-loop` artifact saying what changed. A review server that is down skips steps 1
and 5 (reported; the next run catches up); labeling never waits on it.
`bootstrap`: add a first drop from a folder, train from the seeds and label it.

The flows only orchestrate: every step is the plain stage function from `tasks/` wrapped as a
task, the same function `lamflow stage NAME` and `dvc.yaml` call.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# QC's library is imported with the flow module (process start-up), not in the middle of a run:
# its import costs 5-12 s of one core here. The CLI imports it only for `lamflow stage qc`.
import great_expectations  # noqa: F401
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from lam.errors import LamflowError
from lamflow.params import Params, load_params
from lamflow.storage import exists, join, list_dir, read_bytes, safe_name, sha256_bytes
from tasks.adapt import ADAPT_REPORT, adapt_task
from tasks.export import export_task
from tasks.ingest import INGEST_MANIFEST, add_drop, drop_url, ingest_task, list_drops
from tasks.models import ensure_model_task
from tasks.qc import qc_task
from tasks.seed_set import seed_set_url
from tasks.shards import (
    annotate_shard_task,
    busy_seconds,
    finish_annotate_task,
    plan_shards,
    warm_worker_task,
)

from .review_loop import loop_report, pending_pushes, pull_step, push_step
from .runtime import auto_workers, dask_runner, shared_prefect_api, worker_environment
from .state import (
    RUN_LEASES,
    acquire_lease,
    done_drives,
    drops_by_age,
    is_accepted,
    mark_done,
    read_done,
    read_model_pointer,
    release_lease,
    renew_lease,
    write_model_pointer,
    write_watermark,
)

log = logging.getLogger(__name__)
__all__ = ["auto_workers", "bootstrap", "dask_runner", "nightly", "shared_prefect_api"]
__all__ += ["worker_environment"]


def labels_url(root: str, model_version: str, drive: str) -> str:
    """ROOT/labels/MODEL_VERSION/DRIVE_ID (both components checked)."""
    return join(root, "labels", safe_name(model_version, "model version"), safe_name(drive))


def _thumbnails(out: str, limit: int) -> list[str]:
    """Overlay JPEGs under `out/overlays` as small data-URI markdown images."""
    from PIL import Image

    images = []
    for name in list_dir(join(out, "overlays"))[:limit]:
        img = Image.open(io.BytesIO(read_bytes(join(out, "overlays", name)))).convert("RGB")
        img.thumbnail((320, 320))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=70)
        b64 = base64.b64encode(buf.getvalue()).decode()
        images.append(f"![{name}](data:image/jpeg;base64,{b64})")
    return images


def drop_report(
    drive: str, qc: dict[str, Any], thumbs: list[str], exported: str | None = ""
) -> str:
    """Markdown summary of one drop: counts, mean confidence, class histogram, QC result."""
    hist = ", ".join(f"{k} {v:.1%}" for k, v in qc["class_histogram"].items() if v >= 0.005)
    failed = [c["column"] for c in qc["checks"] if not c["success"]]
    lines = [
        f"### Drop `{drive}` — QC **{qc['status']}**",
        "",
        "| frames | labeled | quarantined | review | mean confidence | drift | QC |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {qc['frames']} | {qc['labeled']} | {qc['quarantined']} | {qc['review']} | "
        f"{qc['mean_confidence']:.3f} | {qc['drift']:.3f} | {qc['status']}"
        f"{' (' + ', '.join(failed) + ')' if failed else ''} |",
        "",
        f"**Class histogram:** {hist}",
        "",
        f"**Exported to** `{exported}`."
        if exported
        else f"**Not exported:** QC failed. The next run labels the drop again; "
        f"`lamflow drop accept {drive}` publishes it as it is.",
        "",
        f"Model `{qc['model_version']}`.",
        "",
        *thumbs,
    ]
    return "\n".join(lines)


def adapted_model(
    root: str, drive: str, images: str, model: dict[str, Any], params: Params
) -> dict[str, Any]:
    """`model` self-trained on this drop's frames (`pipeline.adapt_per_drop`).

    Stored under ROOT/models/adapted/<model version>/<drive>/<hash of the adapt params>/ and
    reused when an earlier (e.g. interrupted) run already made it.
    """
    key = sha256_bytes(json.dumps(params.adapt.model_dump(), sort_keys=True).encode())[:8]
    url = join(root, "models", "adapted", safe_name(model["model_version"]), safe_name(drive), key)
    report_url = join(url, ADAPT_REPORT)
    if exists(report_url):
        report = json.loads(read_bytes(report_url))
    else:
        seeds = seed_set_url(root)  # the seed set the model was trained on
        report = adapt_task(
            model["model"],
            images,
            join(seeds, "images"),
            join(seeds, "labels"),
            url,
            params.adapt,
            progress=False,
        )
    return {
        **model,
        "model": url,
        "model_version": report["model_version"],
        "adapt_seconds": report["seconds"],
    }


def label_drop(root: str, drive: str, model: dict[str, Any], params: Params) -> dict[str, Any]:
    """ingest -> (adapt) -> sharded annotate -> qc -> export for one drop; returns its summary."""
    logger = get_run_logger()
    images = join(drop_url(root, drive), "images")
    if params.pipeline.adapt_per_drop:
        manifest = ingest_task(root, drive, params.ingest, progress=False)
        model = adapted_model(root, drive, images, model, params)
        warm = warm_worker_task.submit(model["model"])
    else:
        # Start the workers (they import torch and load the model) while the flow ingests.
        warm = warm_worker_task.submit(model["model"])
        manifest = ingest_task(root, drive, params.ingest, progress=False)
    out = labels_url(root, model["model_version"], drive)
    shards = plan_shards([e["stem"] for e in manifest["entries"]], params.annotate.shard_size)
    first = params.annotate.model_copy(update={"write_overlays": params.pipeline.overlays_per_drop})
    rest = params.annotate.model_copy(update={"write_overlays": 0})
    futures = [
        annotate_shard_task.submit(model["model"], images, out, stems, first if i == 0 else rest)
        for i, stems in enumerate(shards)
    ]
    shard_results = [f.result() for f in futures]
    warm.result()
    counts = finish_annotate_task(out)
    if counts["quarantined"]:
        logger.warning(
            "drop %s: %d frame(s) quarantined: %s",
            drive,
            len(counts["quarantined"]),
            "; ".join(f"{q['stem']}: {q['reason']}" for q in counts["quarantined"][:5]),
        )
    qc = qc_task(out, join(drop_url(root, drive), INGEST_MANIFEST), model["model"], "", params.qc)
    accepted = qc["status"] == "fail" and is_accepted(root, drive)
    exported: dict[str, Any] = {"dest": None}
    if qc["status"] != "fail" or accepted:
        dest = params.export.dest or join(root, "exports", model["model_version"], drive)
        exported = export_task(out, model["model"], dest, params.export, progress=False)
    else:  # a failed drop is not published: the next run labels it again, or a person accepts
        logger.warning(
            "drop %s failed QC: not exported (`lamflow drop accept %s` to publish it)", drive, drive
        )
    create_markdown_artifact(
        key=f"drop-{drive}".lower().replace("_", "-").replace(".", "-"),
        markdown=drop_report(
            drive, qc, _thumbnails(out, params.pipeline.overlays_per_drop), exported["dest"]
        ),
        description=f"lamflow drop {drive}",
    )
    return {
        "drive": drive,
        "model": model["model"],
        "model_version": model["model_version"],
        "adapt_seconds": model.get("adapt_seconds"),
        "labels": out,
        "export": exported["dest"],
        "frames": manifest["frames"],
        "labeled": counts["labeled"],
        "quarantined": len(counts["quarantined"]),
        "qc": qc["status"],
        "accepted": accepted,
        "shards": len(shards),
        "compute_seconds": round(sum(r["compute_seconds"] for r in shard_results), 3),
        "annotate_busy_seconds": round(busy_seconds([r["interval"] for r in shard_results]), 3),
    }


def _model_changed(root: str, drive: str, version: str) -> bool:
    done = read_done(root, drive)
    return bool(done) and done.get("base_model_version", done.get("model_version")) != version


def _label_under_lease(
    root: str, drive: str, model: dict[str, Any], params: Params, owner: str
) -> dict[str, Any] | None:
    """label_drop under the drop's lease; None when another run holds it."""
    token = acquire_lease(root, drive, owner, params.pipeline.lease_seconds)
    if token is None:
        get_run_logger().info("drop %s is leased by another run: skipped", drive)
        return None
    try:
        summary = label_drop(root, drive, model, params)
        summary["base_model_version"] = model["model_version"]
        if summary["qc"] != "fail" or summary["accepted"]:
            mark_done(root, drive, summary)
        return summary
    finally:
        release_lease(root, drive, token)


@contextmanager
def run_lease(params: Params, owner: str) -> Iterator[Callable[[], None] | None]:
    """ROOT's run lease (one nightly or bootstrap run at a time per ROOT); yields a `renew`
    callable to call between steps, or None when another run holds the lease."""
    root, ttl = params.data.root, params.pipeline.lease_seconds
    token = acquire_lease(root, "nightly", owner, ttl, folder=RUN_LEASES)
    if token is None:
        yield None
        return

    def renew() -> None:
        if not renew_lease(root, "nightly", token, ttl, folder=RUN_LEASES):
            raise LamflowError(f"lost the run lease on {root} to another run: stopping")

    try:
        yield renew
    finally:
        release_lease(root, "nightly", token, folder=RUN_LEASES)


def _run_drops(
    params: Params, drives: list[str], owner: str, renew: Callable[[], None]
) -> dict[str, Any]:
    """One night: pull reviews -> (re)train -> relabel older drops -> label new ones -> push.

    A drop that fails to relabel (its frames pruned, say) is reported and skipped: one old
    drop must not keep every later night from labeling new ones.
    """
    logger = get_run_logger()
    root = params.data.root
    before = read_model_pointer(root)
    pull = pull_step(params)
    renew()
    model = ensure_model_task(root, params, progress=False)
    write_model_pointer(root, model)
    renew()
    backfill = [
        d
        for d in params.review.backfill_drops(drops_by_age(root))
        if d not in drives and _model_changed(root, d, model["model_version"])
    ]
    results: dict[str, Any] = {}
    relabeled: dict[str, Any] = {}
    relabel_errors: dict[str, str] = {}
    skipped = []
    for drive in [*backfill, *drives]:
        try:
            summary = _label_under_lease(root, drive, model, params, owner)
        except Exception as exc:  # noqa: BLE001 - reported, and only for relabels
            if drive in drives:
                raise
            logger.warning("drop %s could not be relabeled, skipped: %s", drive, exc)
            relabel_errors[drive] = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            renew()
        if summary is None:
            skipped.append(drive)
        elif drive in drives:
            results[drive] = summary
        else:
            relabeled[drive] = summary
    waiting = {d: read_done(root, d) for d in pending_pushes(root, sorted(done_drives(root)))}
    push = push_step(params, {**waiting, **results}, model)
    create_markdown_artifact(
        key="review-loop",
        markdown=loop_report(pull, before, model, relabeled, relabel_errors, push),
        description="lamflow review loop: seeds added, model before/after, relabels, pushes",
    )
    return {
        "model": model["model"],
        "model_version": model["model_version"],
        "model_before": before,
        "trained": model["trained"],
        "seeds": model.get("seeds"),
        "drops": results,
        "relabeled": relabeled,
        "relabel_errors": relabel_errors,
        "skipped": skipped,
        "review": {"pull": pull, "push": push},
    }


def _review_failure(result: dict[str, Any]) -> str:
    """One line for a review step that needs a person (not a server that is merely down)."""
    steps = result.get("review", {})
    bad = [f"{k}: {v['reason']}" for k, v in steps.items() if v.get("fatal")]
    return "; ".join(bad)


@flow(
    name="nightly",
    log_prints=True,
    task_runner=dask_runner(os.environ.get("LAMFLOW_DASK_ADDRESS", "")),
)
def nightly(
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    drives: list[str] | None = None,
) -> dict[str, Any]:
    """Label every drop that arrived since the last successful run (or exactly `drives`);
    with a review backend, first learn from the reviews that came back since."""
    params = load_params(params_file, overrides)  # validated before any work
    root = params.data.root
    pending = drives if drives else sorted(set(list_drops(root)) - done_drives(root))
    for drive in pending:
        safe_name(drive, "drive id")
    logger = get_run_logger()
    if not pending and params.review.backend == "none" and not done_drives(root):
        logger.info("no new drops under %s", root)
        return {"drops": {}, "skipped": []}
    logger.info("new drops: %s", ", ".join(pending) if pending else "none")
    owner = str(flow_run.id or os.getpid())
    with run_lease(params, owner) as renew:
        if renew is None:
            logger.info("another nightly run holds %s: nothing done", root)
            return {"drops": {}, "skipped": pending, "busy": True}
        result = _run_drops(params, pending, owner, renew)
    result["run"] = owner
    failed = [
        d
        for d, s in {**result["relabeled"], **result["drops"]}.items()
        if s["qc"] == "fail" and not s.get("accepted")
    ]
    if not failed:
        write_watermark(root, sorted(result["drops"]), owner)
    if failed:
        raise LamflowError(
            f"QC failed for drop(s) {', '.join(failed)}: not exported, not done; see qc.json "
            f"beside the labels; the next run labels them again, or `lamflow drop accept DRIVE`"
        )
    review_problem = _review_failure(result)
    if review_problem:
        raise LamflowError(f"labels written, but the review loop needs attention: {review_problem}")
    return result


@flow(
    name="bootstrap",
    log_prints=True,
    task_runner=dask_runner(os.environ.get("LAMFLOW_DASK_ADDRESS", "")),
)
def bootstrap(
    source: str,
    drive: str,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Add the frames of folder `source` as drop `drive`, train from the seeds, label it."""
    params = load_params(params_file, overrides)
    owner = str(flow_run.id or os.getpid())
    with run_lease(params, owner) as renew:
        if renew is None:
            raise LamflowError(f"another run holds {params.data.root}: try again when it ends")
        add_drop(source, params.data.root, drive, progress=False)
        result = _run_drops(params, [drive], owner, renew)
    write_watermark(params.data.root, sorted(result["drops"]), owner)
    return result
