"""A drop under its lease in the nightly flow, and two nightly runs started together.

The lease tests call the flow's `_label_under_lease` with a stand-in `label_drop`. The last test
starts two nightly runs together on one S3 root (a real SeaweedFS), several rounds. Each run is
its own process (`python -m tests.flows.test_concurrent_runs`), as two schedulers or a scheduled
and a manual run would be. Both import everything first, then start each round's run when a
go-file appears, so the two runs start within milliseconds of each other. The bucket is
versioned: every PUT makes a version, so a write made twice shows as two versions of one key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.state import acquire_lease, done_drives, mark_done, read_done
from lam.errors import LamflowError
from lamflow.params import Params
from tests.pipeline.helpers import write_drop, write_params

REPO = Path(__file__).resolve().parents[2]
BUCKET = "lamflow-race"
ROUNDS = 3
RUNS = ("a", "b")
# Written by every run that gets as far as them: run records, not outputs. Lease generations are
# created by whoever wins a claim and pruned, so they are not outputs either.
RUN_RECORDS = ("state/watermark.json", "state/model.json", "state/leases/", "state/run_leases/")
PER_DROP_LOGS = ("state/qc_history.jsonl",)  # rewritten once per drop labeled, adding its line


def _run_rounds(params_file: str, sync: Path, name: str, rounds: int) -> None:
    """A child process: one nightly run per round, started when `sync/go-ROUND` appears."""
    import s3fs

    from flows.nightly import dask_runner, nightly

    flow = nightly.with_options(task_runner=dask_runner("", workers=1))
    (sync / f"ready-{name}").touch()
    for k in range(rounds):
        while not (sync / f"go-{k}").exists():
            time.sleep(0.002)
        # Each round stands for a new `lamflow nightly` process: without this, s3fs's listing
        # of ROOT/drops cached in an earlier round would hide the new drops from `list_drops`.
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            out: dict[str, Any] = {"result": flow(params_file=params_file)}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out = {"error": f"{type(exc).__name__}: {exc}"}
        (sync / f"result-{k}-{name}.json").write_text(json.dumps(out, default=str))


def _params(root: Path, lease_seconds: float) -> Params:
    """Params with a lease shorter than params.yaml allows (>= 10 s), to keep the tests short."""
    params = Params.model_validate({"data": {"root": str(root)}})
    pipeline = params.pipeline.model_copy(update={"lease_seconds": lease_seconds})
    return params.model_copy(update={"pipeline": pipeline})


@pytest.fixture()
def nightly_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """flows.nightly usable outside a flow run: its run logger is a plain logger."""
    import logging

    import flows.nightly as module

    monkeypatch.setattr(module, "get_run_logger", lambda: logging.getLogger("test"))
    return module


def test_a_drop_longer_than_its_lease_keeps_it_and_is_marked_done(
    nightly_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path)

    def slow_label_drop(root: str, drive: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        for _ in range(5):  # 2 s: more than three times the lease
            time.sleep(0.4)
            assert acquire_lease(root, drive, "other-run", ttl=60) is None
        return {"qc": "pass", "accepted": False, "labeled": 3}

    monkeypatch.setattr(nightly_module, "label_drop", slow_label_drop)
    model = {"model_version": "v1"}
    summary = nightly_module._label_under_lease(root, "d1", model, _params(tmp_path, 0.6), "run")
    assert summary["labeled"] == 3 and read_done(root, "d1")["base_model_version"] == "v1"


def test_a_drop_whose_lease_is_lost_fails_instead_of_being_marked_done(
    nightly_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stops answering the holder's renewals mid-drop; the lease expires and another
    run takes it: the first run's drop fails and is not marked done."""
    root = str(tmp_path)

    def unreachable(*args: Any, **kwargs: Any) -> bool:
        raise OSError("store unreachable")

    def label_drop_losing_the_lease(
        root: str, drive: str, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        monkeypatch.setattr("flows.state.renew_lease", unreachable)
        time.sleep(0.8)
        assert acquire_lease(root, drive, "other-run", ttl=60), "expired: taken over"
        return {"qc": "pass", "accepted": False}

    monkeypatch.setattr(nightly_module, "label_drop", label_drop_losing_the_lease)
    with pytest.raises(LamflowError, match="lost the lease leases/d1"):
        nightly_module._label_under_lease(
            root, "d1", {"model_version": "v1"}, _params(tmp_path, 0.6), "run"
        )
    assert done_drives(root) == set()


def test_a_drop_finished_by_another_run_meanwhile_is_skipped(
    nightly_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B listed the drop as new, then run A labeled it and let go of its lease before B
    took it: B does not label it again (but a drop finished before B began is relabeled when
    asked for, e.g. `lamflow nightly --drive`)."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    root = str(tmp_path)
    started = datetime.now(UTC) - timedelta(seconds=5)
    monkeypatch.setattr(nightly_module, "flow_run", SimpleNamespace(scheduled_start_time=started))
    labeled: list[str] = []

    def label_drop(root: str, drive: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        labeled.append(drive)
        return {"qc": "pass", "accepted": False}

    monkeypatch.setattr(nightly_module, "label_drop", label_drop)
    mark_done(root, "d1", {"base_model_version": "v1"})  # by another run, after B began
    params = _params(tmp_path, 60)
    assert (
        nightly_module._label_under_lease(root, "d1", {"model_version": "v1"}, params, "B") is None
    )
    assert nightly_module._label_under_lease(root, "d1", {"model_version": "v2"}, params, "B")
    later = SimpleNamespace(scheduled_start_time=datetime.now(UTC) + timedelta(seconds=5))
    monkeypatch.setattr(nightly_module, "flow_run", later)
    assert nightly_module._label_under_lease(root, "d1", {"model_version": "v2"}, params, "B")
    assert labeled == ["d1", "d1"]


def _s3_client(server: Any) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.creds.access_key,
        aws_secret_access_key=server.creds.secret_key,
    )


def _versions(client: Any) -> dict[str, set[str]]:
    """Key -> ids of every version written under s3://BUCKET/root/ (keys without 'root/')."""
    out: dict[str, set[str]] = {}
    for page in client.get_paginator("list_object_versions").paginate(
        Bucket=BUCKET, Prefix="root/"
    ):
        for v in page.get("Versions", []):
            out.setdefault(v["Key"][len("root/") :], set()).add(v["VersionId"])
    return out


def _wait_for(paths: list[Path], procs: list[subprocess.Popen[bytes]], logs: Path, s: float):
    """Wait until every path exists; paths[i] is what procs[i] writes. A run that exits after
    writing its path (its last round done) is fine; one that exits without it failed."""
    deadline = time.monotonic() + s
    while not all(p.exists() for p in paths):
        dead = [r.args for r, p in zip(procs, paths) if r.poll() is not None and not p.exists()]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f.read_text()[-3000:] for f in sorted(logs.glob("run-*.log")))
            pytest.fail(f"runs {'exited' if dead else 'timed out'} waiting for {paths}:\n{tails}")
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.slow
def test_two_nightly_runs_started_together_label_every_frame_once(
    prefect_harness: None,
    seaweed: Any,
    seed_set: Path,
    tmp_path: Path,
) -> None:
    from prefect.settings import PREFECT_API_URL

    client = _s3_client(seaweed)
    seaweed.make_bucket(BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    root = f"s3://{BUCKET}/root"
    params = write_params(tmp_path / "params.yaml", root, seed_set)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    procs = []
    for name in RUNS:
        with open(tmp_path / f"run-{name}.log", "wb") as log:
            cmd = [sys.executable, "-m", "tests.flows.test_concurrent_runs"]
            cmd += [str(params), str(sync), name, str(ROUNDS)]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log))
    try:
        _wait_for([sync / f"ready-{n}" for n in RUNS], procs, tmp_path, 300)
        for k in range(ROUNDS):
            drives = [f"r{k}-d{i}" for i in range(2)]
            stems = {d: write_drop(root, d, 3) for d in drives}
            before = _versions(client)
            (sync / f"go-{k}").touch()
            outs = [sync / f"result-{k}-{n}.json" for n in RUNS]
            _wait_for(outs, procs, tmp_path, 300)
            results = {n: json.loads(p.read_text()) for n, p in zip(RUNS, outs)}
            _check_round(k, drives, stems, results, before, _versions(client))
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _check_round(
    k: int,
    drives: list[str],
    stems: dict[str, list[str]],
    results: dict[str, dict[str, Any]],
    before: dict[str, set[str]],
    after: dict[str, set[str]],
) -> None:
    assert not [r["error"] for r in results.values() if "error" in r], results
    runs = {n: r["result"] for n, r in results.items()}
    labeled_by = {d: [n for n, r in runs.items() if d in r["drops"]] for d in drives}
    assert all(len(by) == 1 for by in labeled_by.values()), f"round {k}: {labeled_by}"
    assert all(set(r["drops"]) <= set(drives) for r in runs.values())
    for name, run in runs.items():  # a run that labeled nothing was busy, found them done,
        if not run["drops"]:  # or started after the other had finished them (none pending)
            started_late = not set(run.get("pending", drives)) & set(drives)
            assert run.get("busy") or started_late or set(run["skipped"]) >= set(drives), name

    new = {key: len(ids - before.get(key, set())) for key, ids in after.items()}
    allowed = {key: len(drives) for key in PER_DROP_LOGS}
    written_twice = {
        key: n
        for key, n in new.items()
        if n > allowed.get(key, 1) and not key.startswith(RUN_RECORDS)
    }
    assert not written_twice, f"round {k}: written more than once: {written_twice}"
    for drive in drives:
        (name,) = labeled_by[drive]
        version = runs[name]["drops"][drive]["model_version"]
        base = f"labels/{version}/{drive}"
        for stem in stems[drive]:
            for key in (f"{base}/labels/{stem}.png", f"{base}/records/{stem}.json"):
                assert len(after.get(key, ())) == 1, f"round {k}: {key}: {after.get(key)}"
        assert len(after[f"state/done/{drive}.json"]) == 1
    counts = Counter(n for by in labeled_by.values() for n in by)
    print(f"round {k}: drops labeled per run {dict(counts)}, busy/skip: {_idle(runs)}")


def _idle(runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        n: "busy" if r.get("busy") else f"skipped {r['skipped']}"
        for n, r in runs.items()
        if not r["drops"]
    }


if __name__ == "__main__":  # a child process of the test
    _run_rounds(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
