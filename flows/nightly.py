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

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from lam.errors import LamflowError
from lamflow.params import Params, load_params
from lamflow.storage import join, safe_name
from tasks.ingest import add_drop, drop_url, list_drops
from tasks.model_pointer import published_model
from tasks.models import seed_sources
from tasks.vocabulary import VOCABULARY_FILE

from .drop import adapted_model, label_drop, published
from .review_loop import loop_report, pending_pushes, pull_step, push_step, pushed_overlays
from .runtime import auto_workers, dask_runner, shared_prefect_api, worker_environment
from .stage_tasks import train_task, version_task
from .state import (
    RUN_LEASES,
    done_drives,
    drops_by_age,
    held_lease,
    leased_by_another,
    mark_done,
    note_done,
    read_done,
    read_model_pointer,
    write_model_pointer,
    write_watermark,
)

log = logging.getLogger(__name__)
__all__ = ["adapted_model", "auto_workers", "bootstrap", "dask_runner", "label_drop"]
__all__ += ["nightly", "shared_prefect_api", "worker_environment"]


def _learned_alike(done: dict[str, Any], model: dict[str, Any]) -> bool:
    """Whether the model that finished a drop (its done record) learned from the same seeds
    and params as `model`. A model that differs only in the night's unlabeled drops
    (train.unlabeled_method: norm_stats adapts to them) counts as alike: it was adapted to
    the new drops, not to older ones, and relabelling every drop every night would cost a
    fleet's whole history each night. Records from before `seed_key` compare versions."""
    if done.get("seed_key") and model.get("seed_key"):
        return bool(done["seed_key"] == model["seed_key"])
    return bool(done.get("base_model_version", done.get("model_version")) == model["model_version"])


def _model_changed(root: str, drive: str, model: dict[str, Any]) -> bool:
    """Whether finished `drive` was labelled by a model that learned otherwise than `model`."""
    done = read_done(root, drive)
    return bool(done) and not _learned_alike(done, model)


def _finished_since_run_start(root: str, drive: str, version: str) -> bool:
    """Another run finished `drive` with model `version` after this run began (so after this
    run listed its drops): the drop is not labeled twice."""
    done = read_done(root, drive)
    if done.get("base_model_version", done.get("model_version")) != version:
        return False
    started = flow_run.scheduled_start_time  # "now" outside a flow run: never skipped
    finished = str(done.get("finished_at") or "")
    return bool(finished) and datetime.fromisoformat(finished) >= started.replace(microsecond=0)


def _label_under_lease(
    root: str, drive: str, model: dict[str, Any], params: Params, owner: str
) -> dict[str, Any] | None:
    """label_drop under the drop's lease, renewed in the background while the drop is labeled;
    None when another run holds the lease or finished the drop meanwhile. A lease lost on the
    way (it expired and another run took it over) fails the drop instead of marking it done."""
    with held_lease(root, drive, owner, params.pipeline.lease_seconds) as lease:
        if lease is None:
            get_run_logger().info("drop %s is leased by another run: skipped", drive)
            return None
        if _finished_since_run_start(root, drive, model["model_version"]):
            get_run_logger().info("drop %s was finished by another run meanwhile: skipped", drive)
            return None
        summary = label_drop(root, drive, model, params, still_ours=lease.check)
        summary["base_model_version"] = model["model_version"]
        summary["seed_key"] = model.get("seed_key", "")
        lease.check()
        if published(summary):
            mark_done(root, drive, summary)
        return summary


@contextmanager
def run_lease(params: Params, owner: str) -> Iterator[Callable[[], None] | None]:
    """ROOT's run lease (one nightly or bootstrap run at a time per ROOT), renewed in the
    background; yields a callable to call between steps, which raises LamflowError once the
    lease is lost, or None when another run holds the lease."""
    root, ttl = params.data.root, params.pipeline.lease_seconds
    with held_lease(root, "nightly", owner, ttl, folder=RUN_LEASES) as lease:
        yield None if lease is None else lease.check


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
    # The night's new drops are the frames the model is for: `train --unlabeled` (read only
    # when train.unlabeled_method is not none; their labels are never read). A drop another
    # run holds is left to that run. With none left, the model in use is kept if it learned
    # from the same seeds.
    ours = [d for d in drives if not leased_by_another(root, d, owner)]
    drop_images = [join(drop_url(root, d), "images") for d in ours]
    model = train_task(
        root, params, progress=False, unlabeled=drop_images, current=published_model(root)
    )
    write_model_pointer(root, model)
    renew()
    backfill = [
        d
        for d in params.review.backfill_drops(drops_by_age(root))
        if d not in drives and _model_changed(root, d, model)
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
    versions = _version_step(params, owner, model, {**relabeled, **results})
    renew()
    waiting = {d: read_done(root, d) for d in pending_pushes(root, sorted(done_drives(root)))}
    push = push_step(params, {**waiting, **results}, model)
    create_markdown_artifact(
        key="review-loop",
        markdown=loop_report(
            pull,
            before,
            model,
            relabeled,
            relabel_errors,
            push,
            pushed_overlays(
                root,
                push.get("drops", {}),
                seed_sources(params)["classes"],
                params.pipeline.overlays_per_drop,
            ),
        ),
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
        "versions": versions,
    }


def _version_step(
    params: Params, run: str, model: dict[str, Any], labeled: dict[str, Any]
) -> dict[str, Any]:
    """The `version` stage over this run's published drops, and over finished drops of the
    same model whose labels no run has versioned yet (a version step that failed on an
    earlier night: those drops are done, so nothing else would bring them back), as git tag
    run-RUN in the workspace. Each versioned drop's done record then names its tag."""
    if not params.versioning.enabled:
        return {"enabled": False}
    root = params.data.root
    labels = {d: s["labels"] for d, s in labeled.items() if published(s)}
    for drive in sorted(done_drives(root) - set(labels)):
        done = read_done(root, drive)
        # a model alike to this run's (the labels' URL names the version that wrote them)
        alike = _learned_alike(done, model)
        if alike and done.get("labels") and done.get("versioned_labels") != done["labels"]:
            labels[drive] = str(done["labels"])
    drops = {
        d: {"labels": url, "vocabulary": join(drop_url(root, d), VOCABULARY_FILE)}
        for d, url in labels.items()
    }
    result = version_task(
        root,
        run,
        model["model"],
        model["model_version"],
        model["seed_set"],
        drops,
        params.versioning,
    )
    for drive, url in labels.items():
        if read_done(root, drive):
            note_done(root, drive, {"versioned_labels": url, "version_tag": result["tag"]})
    get_run_logger().info("versioned as %s in %s", result["tag"], result["workspace"])
    return {k: result[k] for k in ("workspace", "remote", "tag", "commit")} | {
        "drops": sorted(drops)
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
        return {"drops": {}, "skipped": [], "pending": []}
    logger.info("new drops: %s", ", ".join(pending) if pending else "none")
    owner = str(flow_run.id or os.getpid())
    with run_lease(params, owner) as renew:
        if renew is None:
            logger.info("another nightly run holds %s: nothing done", root)
            return {"drops": {}, "skipped": pending, "busy": True}
        result = _run_drops(params, pending, owner, renew)
    result["run"] = owner
    result["pending"] = pending  # the new drops this run found when it started
    _succeed_or_raise(root, result, owner)
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
    _succeed_or_raise(params.data.root, result, owner)
    return result


def _succeed_or_raise(root: str, result: dict[str, Any], run: str) -> None:
    """Write the watermark (a successful run) unless a drop failed QC unaccepted: then raise,
    naming the drops, which are neither exported nor done."""
    labeled = {**result["relabeled"], **result["drops"]}
    failed = [d for d, s in labeled.items() if not published(s)]
    if failed:
        raise LamflowError(
            f"QC failed for drop(s) {', '.join(failed)}: not exported, not done; see qc.json "
            f"beside the labels; the next run labels them again, or `lamflow drop accept DRIVE`"
        )
    write_watermark(root, sorted(result["drops"]), run)
