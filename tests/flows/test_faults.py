"""Fault injection around the nightly flow: storage outages and resets, and a SIGKILLed run.

1. Between the flow and SeaweedFS sits a TCP proxy (tests/fault_proxy.py) that, while the drop
   is labeled, takes S3 away in turns (connections refused, reset at accept, black-holed),
   resets every live connection as each outage starts and cuts every few PUTs halfway through
   their body. After the run and at most one plain re-run, every decodable frame has one
   labeled record, none is quarantined for a storage reason, and no frame was labeled twice.
2. The flow process is SIGKILLed in the middle of a drop; a plain re-run (once the killed
   run's leases expired) finishes it, and no partial PNG, record or temporary file is left.
Both are marked integration and slow (about a minute each on 2 cores). Two quick tests pin the
fixes these faults called for: the temporaries of interrupted local writes, and the warm-up.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flows.nightly import dask_runner, nightly, shared_prefect_api
from lamflow.storage import get_fs, is_temporary, sha256_bytes
from tests.fault_proxy import FaultProxy
from tests.pipeline.helpers import write_drop, write_params

REPO = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 10  # the least pipeline.lease_seconds allows: a killed run's lease expires soon
# Under storage outages a lease must outlive the longest outage (15 s here), or the run loses
# it (flows/state.py: a run that cannot renew its lease before it expires stops).
FAULT_LEASE_SECONDS = 30
FINAL = {"labels": ".png", "confidence": ".png", "records": ".json", "overlays": ".jpg"}


def _run(params: Path) -> dict[str, Any]:
    with shared_prefect_api():
        return nightly.with_options(task_runner=dask_runner("", workers=1))(params_file=str(params))


def _fresh_fs(url: str) -> Any:
    """The file system of `url` with no listing cached (another process may have written)."""
    fs, _ = get_fs(url)
    fs.invalidate_cache()
    return fs


def _tree(fs: Any, base: str) -> list[str]:
    """Every file under `base`, as paths relative to it (sorted)."""
    base = base.rstrip("/")
    return sorted(p[len(base) + 1 :] for p in fs.find(base))


def _check_drop(
    root: str, out: str, good: list[str], bad: list[str], version: str
) -> dict[str, dict[str, Any]]:
    """The drop's labels folder holds exactly what a finished run leaves: a labeled record
    (input sha256, model version) and two decodable PNGs per good frame, a quarantine record
    per undecodable one, a manifest listing each frame once, and no other (partial,
    temporary) file. Returns the records by stem."""
    fs = _fresh_fs(out)
    _, out_path = get_fs(out)
    _, images = get_fs(f"{root}/drops/d1/images")
    names = _tree(fs, out_path)
    extra = []
    for name in names:
        folder, _, leaf = name.partition("/")
        if folder in FINAL and "/" not in leaf and leaf.endswith(FINAL[folder]):
            continue
        if "/" not in name and name.endswith((".json", ".jsonl", ".csv")):
            if name.endswith(".json"):
                json.loads(fs.cat_file(f"{out_path}/{name}"))  # whole, not partial
            continue  # the manifest and QC's outputs
        extra.append(name)
    assert not extra, f"unexpected (partial or temporary) files in {out}: {extra}"
    records = {}
    for stem in good + bad:
        rec = json.loads(fs.cat_file(f"{out_path}/records/{stem}.json"))
        assert rec["stem"] == stem and rec["model_version"] == version
        frame = fs.cat_file(f"{images}/{stem}.png")
        assert rec["sha256"] == sha256_bytes(frame)
        records[stem] = rec
    assert sorted(n for n in names if n.startswith("records/")) == sorted(
        f"records/{s}.json" for s in good + bad
    )
    labeled = sorted(s for s, r in records.items() if r["status"] == "labeled")
    quarantined = {s: r["reason"] for s, r in records.items() if r["status"] == "quarantined"}
    assert labeled == sorted(good), f"not labeled: {sorted(set(good) - set(labeled))}"
    assert sorted(quarantined) == sorted(bad), f"quarantined: {quarantined}"
    for stem in good:
        label = np.asarray(Image.open(io.BytesIO(fs.cat_file(f"{out_path}/labels/{stem}.png"))))
        conf = Image.open(io.BytesIO(fs.cat_file(f"{out_path}/confidence/{stem}.png")))
        assert label.shape == (64, 96) and conf.size == (96, 64)
        assert int(label.max()) <= 2  # class ids of the tiny class list
    manifest = [
        json.loads(line)["stem"]
        for line in fs.cat_file(f"{out_path}/manifest.jsonl").decode().splitlines()
    ]
    assert sorted(manifest) == sorted(good + bad)
    return records


@pytest.mark.integration
@pytest.mark.slow
def test_storage_outages_and_resets_while_labeling_lose_no_frame(
    prefect_harness: None,
    seaweed: Any,
    seed_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = f"s3://lamflow-test/faults-{uuid.uuid4().hex[:8]}"
    good = write_drop(root, "d1", 40)
    corrupt = "d1_bad_corrupt"
    get_fs(root)[0].pipe_file(
        f"{root.removeprefix('s3://')}/drops/d1/images/{corrupt}.png", b"\x89PNG\r\n\x1a\nnot"
    )
    params = write_params(
        tmp_path / "params.yaml",
        root,
        seed_set,
        annotate={"shard_size": 4, "batch_size": 1},
        pipeline={"lease_seconds": FAULT_LEASE_SECONDS},
    )
    runs: list[Any] = []
    with FaultProxy(("127.0.0.1", seaweed.ports["s3"])) as proxy:
        monkeypatch.setenv("LAMFLOW_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        # While the drop's labels are written (the n-th label PUT starts each outage, so
        # every one lands mid-labeling however fast the machine): S3 black-holed for 2 s,
        # connections reset at accept for 2 s, refused for 15 s (longer than botocore's own
        # retries wait, so a storage error reaches annotate and Prefect retries the shard),
        # black-holed and reset again. Live connections are reset as each outage starts, and
        # every 7th PUT from the first label on is cut halfway through its body.
        proxy.outages_after(
            "/d1/labels/",  # the drop's label PNGs (not the seed set's labels/)
            [
                (3, "blackhole", 2),
                (8, "reset", 2),
                (14, "refuse", 15),
                (24, "blackhole", 2),
                (30, "reset", 2),
            ],
            cut_puts_every=7,
        )
        started = time.monotonic()
        try:
            runs.append(_run(params))
        except Exception as exc:  # noqa: BLE001 - a run the faults stopped; re-run below
            runs.append(exc)
        faulty_seconds = time.monotonic() - started
        proxy.stop_faults()
        if isinstance(runs[0], BaseException):
            time.sleep(FAULT_LEASE_SECONDS + 1)  # a lease the failed run could not release
            runs.append(_run(params))  # the one plain re-run, no faults
        monkeypatch.undo()  # check through SeaweedFS directly, not the proxy
        result = runs[-1]
        d1 = result["drops"]["d1"]
        assert (d1["frames"], d1["labeled"], d1["quarantined"]) == (41, 40, 1)
        out = d1["labels"]
        records = _check_drop(root, out, good, [corrupt], result["model_version"])
        assert "decode" in records[corrupt]["reason"]

        # "Labeled once": each good frame's record was written by one labeling. A record is
        # written last, so a frame is done once its record exists; transport retries of the
        # one PUT carry the same bytes, a second labeling would carry other bytes (timing).
        _, out_path = get_fs(out)
        record_puts = [e for e in proxy.exchanges("PUT", f"{out_path}/records/") if e.status < 300]
        label_puts = [e for e in proxy.exchanges("PUT", f"{out_path}/labels/") if e.status < 300]
        bodies: dict[str, set[str]] = {}
        for e in record_puts:
            bodies.setdefault(e.path.rsplit("/", 1)[-1][:-5], set()).add(e.body_sha256)
        twice = {s: len(b) for s, b in bodies.items() if len(b) > 1}
        assert not twice, f"frames labeled more than once: {twice}"
        assert sorted(bodies) == sorted([*good, corrupt])
        log = proxy.log
        report = {
            "frames": 41,
            "runs": [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in runs],
            "faulty_run_seconds": round(faulty_seconds, 1),
            "outages": Counter(f"{m} {s:g}s" for m, s in log.outages),
            "connections_reset": log.resets,
            "connections_rejected": log.rejected,
            "puts_cut": len(log.cut_puts),
            "requests_unanswered": len(log.unanswered),
            "record_puts_ok": len(record_puts),
            "label_puts_ok": len(label_puts),
            "labels_put_more_than_once": sum(
                1 for n in Counter(e.path for e in label_puts).values() if n > 1
            ),
            "lost": 0,
        }
        print(f"\nfault report: {json.dumps(report, default=str)}")
        assert ("refuse", 15) in log.outages and len(log.outages) >= 3
        assert log.resets + log.rejected > 0 and log.cut_puts


@pytest.mark.integration
@pytest.mark.slow
def test_sigkilled_run_is_finished_by_a_rerun_with_no_partial_file(
    prefect_harness: None, seed_set: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    root = tmp_path / "root"
    good = write_drop(str(root), "d1", 60)
    params = write_params(
        tmp_path / "params.yaml",
        str(root),
        seed_set,
        annotate={"shard_size": 4, "batch_size": 1},
        pipeline={"lease_seconds": LEASE_SECONDS},
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "killed-run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "nightly", "--params", str(params)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes every child with it
    )
    labels_root = root / "labels"
    deadline = time.monotonic() + 240
    done_at_kill = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done_at_kill = len(list(labels_root.glob("*/d1/records/*.json")))
            if done_at_kill >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before the kill: {log.name}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
    killed_at = time.monotonic()
    assert done_at_kill >= 8, "no frame was labeled within 4 minutes"
    (out,) = labels_root.glob("*/d1")
    records = sorted(p.stem for p in (out / "records").glob("*.json"))
    assert 8 <= len(records) < len(good), records
    for stem in records:  # a record is written last: its PNGs are there and whole
        json.loads((out / "records" / f"{stem}.json").read_text())
        Image.open(out / "labels" / f"{stem}.png").load()
        Image.open(out / "confidence" / f"{stem}.png").load()
    finished = {s: (out / "records" / f"{s}.json").read_bytes() for s in records}
    left_by_kill = sorted(str(p.relative_to(root)) for p in root.rglob("*") if is_temporary(p.name))
    # What a kill in the middle of a local write leaves: a hidden temporary holding part of
    # the bytes, never renamed to the final name. The kill above rarely lands inside a write
    # (well under a millisecond), so such leftovers are planted in the labels and export
    # folders as well.
    version = out.parent.name
    half_png = (root / "drops" / "d1" / "images" / f"{good[-1]}.png").read_bytes()[:500]
    planted = [
        out / "labels" / f".{good[-1]}.png.tmp-0badf00d",
        out / "records" / f".{good[-1]}.json.tmp-0badf00d",
        root / "exports" / version / "d1" / "labels" / f".{good[-1]}.png.tmp-0badf00d",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(half_png)
        os.utime(path, (time.time() - 600, time.time() - 600))  # left by a kill long ago

    time.sleep(max(0.0, LEASE_SECONDS + 1 - (time.monotonic() - killed_at)))
    result = _run(params)

    assert result["drops"] and not result.get("skipped"), result
    d1 = result["drops"]["d1"]
    assert (d1["frames"], d1["labeled"], d1["quarantined"]) == (60, 60, 0)
    assert Path(d1["labels"]) == out
    after = _check_drop(str(root), str(out), good, [], result["model_version"])
    for stem, record in finished.items():  # what the killed run finished is not labeled again
        assert after[stem] == json.loads(record)
    export = Path(d1["export"])
    assert export == root / "exports" / version / "d1"
    assert sorted(p.stem for p in (export / "labels").iterdir()) == good  # no temporary
    for folder in (root / "labels", root / "exports"):
        assert not [p for p in folder.rglob("*") if is_temporary(p.name)]
    print(
        f"\nkill report: frames 60, records at kill {len(records)}, temporary files left by "
        f"the kill {left_by_kill}, planted {len(planted)} (all removed by the re-run), lost 0"
    )


def test_a_write_cut_short_leaves_a_hidden_temporary_that_the_next_run_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local write killed before its rename leaves a hidden temporary, never a partial file
    under the final name; rebuilding the manifest (the end of annotate) deletes it."""
    import lamflow.storage
    from lamflow.storage import write_bytes_atomic
    from tasks.annotate import write_manifest

    out = tmp_path / "out"
    write_bytes_atomic(str(out / "records" / "a.json"), b'{"stem": "a", "status": "labeled"}')

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # the process dies between the write and the rename

    monkeypatch.setattr(lamflow.storage, "_rename", killed)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(str(out / "labels" / "b.png"), b"\x89PNG partial")
    monkeypatch.undo()
    (left,) = (out / "labels").iterdir()
    assert left.name.startswith(".b.png.tmp-") and is_temporary(left.name)
    assert [r["stem"] for r in write_manifest(str(out))] == ["a"]
    assert list((out / "labels").iterdir()) == [left], "a fresh one may be a live write: kept"
    os.utime(left, (time.time() - 600, time.time() - 600))  # left by a kill long ago
    write_manifest(str(out))
    assert list((out / "labels").iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["labels", "manifest.jsonl", "records"]


def test_a_storage_error_in_the_warm_up_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm-up only gives the workers a head start: its storage error must not fail a drop
    whose shards (which load the model themselves, with retries) all labeled fine."""
    import tasks.shards

    def outage(*args: Any, **kwargs: Any) -> None:
        raise OSError("Could not connect to the endpoint URL")

    monkeypatch.setattr(tasks.shards, "load_annotator", outage)
    result = tasks.shards.warm_worker("s3://bucket/models/m")
    assert result["error"] == "OSError: Could not connect to the endpoint URL"
