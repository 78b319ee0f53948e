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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# QC's library is imported with the flow module (process start-up), not in the middle of a run:
# its import costs 5-12 s of one core here. The CLI imports it only for `lamflow stage qc`.
import great_expectations  # noqa: F401
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner

from lam.errors import LamflowError
from lam.predictor import usable_cores
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
from .state import (
    acquire_lease,
    done_drives,
    drops_by_age,
    mark_done,
    read_done,
    read_model_pointer,
    release_lease,
    write_model_pointer,
    write_watermark,
)

log = logging.getLogger(__name__)


def auto_workers(cores: int | None = None) -> int:
    """Default LocalCluster size: one worker per 4 cores, at least one.

    One torch process with several threads beats several one-thread processes on small
    machines (measured on the 2-core CI machine: one process 11-12 frames/s, two concurrent
    one-thread processes 2.5 frames/s each), and torch's convolutions scale well to ~4 threads.
    """
    return max(1, (cores or usable_cores()) // 4)


def worker_environment(threads: int) -> dict[str, str | None]:
    """Environment a Dask Nanny sets before it spawns a worker (`pre-spawn-environ`).

    Dask's default sets MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's dynamic mmap
    threshold: every tensor above 128 KiB is then a fresh mmap, zero-filled page by page, and
    torch inference ran 25-40% slower in such a process (measured here). `None` unsets it.
    The thread variables give each worker its share of the cores instead of dask's 1.
    """
    share = str(max(1, threads))
    return {
        "MALLOC_TRIM_THRESHOLD_": None,
        "OMP_NUM_THREADS": share,
        "MKL_NUM_THREADS": share,
        "OPENBLAS_NUM_THREADS": share,
        "LAMFLOW_TORCH_THREADS": share,
    }


def dask_runner(
    address: str = "", workers: int = 0, processes: bool | None = None
) -> TaskRunner[Any]:
    """prefect-dask runner: an existing scheduler at `address`, else a LocalCluster.

    LocalCluster workers run one task at a time each (one model per worker keeps memory
    predictable); `workers=0` picks `auto_workers()`. `processes=None` means worker processes
    when there is more than one worker (torch in each gets cores / workers threads), and a
    single worker thread inside the flow's process otherwise: a lone worker process buys no
    parallelism but costs ~15 s per run to spawn and import torch (measured here).
    Workers of an existing scheduler are started by whoever runs them (infra/k8s), with the
    same environment (see `worker_environment`).
    """
    import dask
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    workers = workers or auto_workers()
    if processes is None:
        processes = workers > 1
    # Dask's statistical profiler samples every thread's stack each 10 ms, holding the GIL;
    # nobody reads those profiles here (no dashboard), so it is switched off.
    dask.config.set({"distributed.worker.profile.enabled": False})
    if processes:
        dask.config.set(
            {"distributed.nanny.pre-spawn-environ": worker_environment(usable_cores() // workers)}
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": processes,
            "dashboard_address": None,
        },
    )


@contextmanager
def shared_prefect_api() -> Iterator[str]:
    """One Prefect API for the flow and its Dask worker processes.

    Workers are separate processes: without PREFECT_API_URL in their environment each would
    start its own temporary server and its task runs would not show in the UI. This uses the
    configured API if there is one, else starts one temporary server and exports its URL.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL", "")
    server = None
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
        server = SubprocessASGIServer()
        server.start(timeout=timeout)
        url = server.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        if server is not None:
            server.stop()


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


def drop_report(drive: str, qc: dict[str, Any], thumbs: list[str]) -> str:
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
    dest = params.export.dest or join(root, "exports", model["model_version"], drive)
    exported = export_task(out, model["model"], dest, params.export, progress=False)
    create_markdown_artifact(
        key=f"drop-{drive}".lower().replace("_", "-").replace(".", "-"),
        markdown=drop_report(drive, qc, _thumbnails(out, params.pipeline.overlays_per_drop)),
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
        if summary["qc"] != "fail":
            mark_done(root, drive, summary)
        return summary
    finally:
        release_lease(root, drive, token)


def _run_drops(params: Params, drives: list[str], owner: str) -> dict[str, Any]:
    """One night: pull reviews -> (re)train -> relabel older drops -> label new ones -> push."""
    root = params.data.root
    before = read_model_pointer(root)
    pull = pull_step(params)
    model = ensure_model_task(root, params, progress=False)
    write_model_pointer(root, model)
    backfill = [
        d
        for d in params.review.backfill_drops(drops_by_age(root))
        if d not in drives and _model_changed(root, d, model["model_version"])
    ]
    results: dict[str, Any] = {}
    relabeled: dict[str, Any] = {}
    skipped = []
    for drive in [*backfill, *drives]:
        summary = _label_under_lease(root, drive, model, params, owner)
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
        markdown=loop_report(pull, before, model, sorted(relabeled), push),
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
    token = acquire_lease(root, "nightly", owner, params.pipeline.lease_seconds)
    if token is None:
        logger.info("another nightly run holds %s: nothing done", root)
        return {"drops": {}, "skipped": pending, "busy": True}
    try:
        result = _run_drops(params, pending, owner)
    finally:
        release_lease(root, "nightly", token)
    failed = [d for d, s in result["drops"].items() if s["qc"] == "fail"]
    if not failed:
        write_watermark(root, sorted(result["drops"]), owner)
    if failed:
        raise LamflowError(
            f"QC failed for drop(s) {', '.join(failed)}: see qc.json beside the labels"
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
    add_drop(source, params.data.root, drive, progress=False)
    owner = str(flow_run.id or os.getpid())
    result = _run_drops(params, [drive], owner)
    write_watermark(params.data.root, sorted(result["drops"]), owner)
    return result
