"""Distributed `annotate`: a drop cut into shards, each shard one retried Prefect task run.

Each shard calls the same `tasks.annotate.annotate` as the CLI, on an explicit stem list, with
`shard=True`. The model is cached per worker process (`tasks.model_io.load_annotator`), so a Dask
worker loads it once and reuses it for every shard it runs. Per-frame records make a retried or
re-run shard skip what is done, so a frame is never labeled twice; a bad frame is quarantined
inside its shard and never fails it. `finish_annotate` rebuilds manifest.jsonl once at the end.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from lam.errors import LamflowError
from lamflow.params import AnnotateParams
from tasks.annotate import annotate, write_manifest
from tasks.model_io import load_annotator

log = logging.getLogger(__name__)


def plan_shards(stems: list[str], shard_size: int) -> list[list[str]]:
    """Cut sorted `stems` into consecutive shards of at most `shard_size` frames."""
    if shard_size < 1:
        raise LamflowError(f"annotate.shard_size must be >= 1, got {shard_size}")
    ordered = sorted(stems)
    return [ordered[i : i + shard_size] for i in range(0, len(ordered), shard_size)]


def _limit_torch_threads() -> None:
    """Inside a Dask worker, give torch its share of the cores (workers x threads <= cores)."""
    share = os.environ.get("LAMFLOW_TORCH_THREADS")
    if share:
        import torch

        if torch.get_num_threads() != int(share):
            torch.set_num_threads(int(share))


def annotate_shard(
    model: str, images: str, out: str, stems: list[str], params: AnnotateParams | None = None
) -> dict[str, Any]:
    """Label one shard (`stems` of the drop at `images`) into `out`.

    Returns the annotate summary plus `"compute_seconds"` (wall time inside this call), which
    the benchmark sums, and `"interval"` ([start, end] epoch seconds) for `busy_seconds`.
    """
    _limit_torch_threads()
    started, wall_started = time.perf_counter(), time.time()
    summary = annotate(model, images, out, params, stems=stems, progress=False, shard=True)
    result = summary.as_dict()
    result["compute_seconds"] = round(time.perf_counter() - started, 4)
    result["interval"] = [wall_started, time.time()]  # epoch seconds, for busy_seconds()
    result["pid"] = os.getpid()
    return result


def warm_worker(model: str, params: AnnotateParams | None = None) -> dict[str, Any]:
    """Build this worker's cached annotator (tasks.model_io.load_annotator) before its shards.

    Submitted when a drop starts, so the cluster's worker processes start, import torch and
    load the model while the flow ingests the drop, not after it. Only a head start: a storage
    error reading the model is logged and returned ("error"), not raised, since every shard
    loads the model itself (with its own retries); raising failed a drop whose shards had all
    labeled fine after a storage outage during the warm-up.
    """
    started = time.perf_counter()
    params = params or AnnotateParams()
    result: dict[str, Any] = {"pid": os.getpid()}
    try:
        load_annotator(model, params.device, params.batch_size)
    except OSError as exc:  # s3fs raises OSError (and subclasses) for storage faults
        log.warning("warm-up of %s failed, the shards load it themselves: %s", model, exc)
        result["error"] = f"{type(exc).__name__}: {exc}"
    return {**result, "seconds": round(time.perf_counter() - started, 3)}


def busy_seconds(intervals: list[list[float]]) -> float:
    """Length of the union of [start, end] intervals: time at least one shard was computing."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def finish_annotate(out: str) -> dict[str, Any]:
    """Rebuild `out/manifest.jsonl` from the per-frame records; count labeled / quarantined."""
    records = write_manifest(out)
    stems = [r["stem"] for r in records]
    if len(stems) != len(set(stems)):
        raise LamflowError(f"{out}: manifest lists a frame twice")
    quarantined = [r for r in records if r["status"] == "quarantined"]
    return {
        "out": out,
        "records": len(records),
        "labeled": len(records) - len(quarantined),
        "quarantined": [{"stem": r["stem"], "reason": r["reason"]} for r in quarantined],
    }
