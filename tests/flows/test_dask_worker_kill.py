"""A Dask worker process killed mid-shard: the shard is rescheduled and completes, once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lamflow.params import AnnotateParams
from tasks.ingest import ingest
from tasks.shards import annotate_shard, finish_annotate
from tests.pipeline.helpers import write_drop

pytestmark = [pytest.mark.slow]


def test_killed_worker_shard_is_retried_to_completion(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    from distributed import Client, LocalCluster

    root = str(tmp_path)
    write_drop(root, "d1", 40)
    stems = [e["stem"] for e in ingest(root, "d1", progress=False)["entries"]]
    out = str(tmp_path / "labels/d1")
    records = tmp_path / "labels/d1/records"
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        pid = next(iter(client.run(os.getpid).values()))
        future = client.submit(
            annotate_shard,
            tiny_model["model"],
            f"{root}/drops/d1/images",
            out,
            stems,
            AnnotateParams(batch_size=1),
            pure=False,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (
            records.exists() and len(list(records.iterdir())) >= 2
        ):
            time.sleep(0.05)
        done_before = {p.name: p.read_bytes() for p in records.iterdir()}
        assert not future.done(), "the shard finished before the worker could be killed"
        os.kill(pid, signal.SIGKILL)  # the nanny restarts the worker; the scheduler reschedules
        result = future.result(timeout=600)
    assert result["pid"] != pid
    assert result["skipped"] >= len(done_before) and result["labeled"] + result["skipped"] == 40
    counts = finish_annotate(out)
    assert counts["records"] == counts["labeled"] == 40
    assert {
        p.name: p.read_bytes() for p in records.iterdir() if p.name in done_before
    } == done_before
