"""Against a real SeaweedFS S3 server: storage, a crash of the server mid-annotate, DVC remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lamflow.params import AnnotateParams
from lamflow.storage import get_fs, list_images, read_bytes, write_bytes_atomic
from tasks.ingest import ingest
from tasks.shards import annotate_shard, finish_annotate
from tests.pipeline.helpers import write_drop

pytestmark = [pytest.mark.integration]


def _fresh_fs_cache() -> None:
    """Forget cached s3fs instances (their connections may point at a dead server)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def test_storage_round_trip_on_s3(seaweed: Any) -> None:
    root = "s3://lamflow-test/storage"
    write_bytes_atomic(f"{root}/a/x.png", b"123")
    assert read_bytes(f"{root}/a/x.png") == b"123"
    assert [s for s, _ in list_images(f"{root}/a")] == ["x"]
    with pytest.raises(FileNotFoundError, match="no such file: s3://lamflow-test/storage/nope"):
        read_bytes(f"{root}/nope")


def test_wrong_credentials_are_refused_without_leaking_the_secret(
    seaweed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    _fresh_fs_cache()
    try:
        with pytest.raises(PermissionError) as info:
            read_bytes("s3://lamflow-test/storage/a/x.png")
        assert "definitely-wrong" not in str(info.value)
    finally:
        monkeypatch.undo()
        _fresh_fs_cache()


def _records(out: str) -> dict[str, bytes]:
    fs, path = get_fs(out)
    fs.invalidate_cache()
    names = (
        [p for p in fs.ls(f"{path}/records", detail=False)] if fs.exists(f"{path}/records") else []
    )
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in names}


@pytest.mark.slow
def test_server_killed_mid_annotate_then_rerun_labels_every_frame_once(
    seaweed: Any, tiny_model: dict[str, Any]
) -> None:
    root = "s3://lamflow-test/crash"
    write_drop(root, "d1", 30, bad=True)
    manifest = ingest(root, "d1", progress=False)
    stems = [e["stem"] for e in manifest["entries"]]
    images, out = f"{root}/drops/d1/images", f"{root}/labels/v/d1"
    params = AnnotateParams(batch_size=1)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            annotate_shard(tiny_model["model"], images, out, stems, params)
        except BaseException as exc:  # noqa: BLE001 - the failure is what we are testing
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 300
    fs, path = get_fs(out)
    while time.monotonic() < deadline and worker.is_alive():
        fs.invalidate_cache()
        if fs.exists(f"{path}/records") and len(fs.ls(f"{path}/records", detail=False)) >= 3:
            break
        time.sleep(0.05)
    seaweed.kill()
    worker.join(300)
    assert not worker.is_alive()
    assert errors, "annotate should fail while the S3 server is down"

    seaweed.start(timeout=120)
    _fresh_fs_cache()
    before = _records(out)
    assert 3 <= len(before) < len(stems)
    result = annotate_shard(tiny_model["model"], images, out, stems, params)
    assert result["skipped"] == len(before)
    counts = finish_annotate(out)
    after = _records(out)
    assert counts["records"] == len(after) == manifest["frames"] == 33
    assert counts["labeled"] == 30 and len(counts["quarantined"]) == 3
    assert {k: after[k] for k in before} == before  # nothing finished before was written again
    manifest_lines = read_bytes(f"{out}/manifest.jsonl").decode().splitlines()
    listed = [json.loads(line)["stem"] for line in manifest_lines]
    assert sorted(listed) == sorted(stems) and len(set(listed)) == len(listed)
    fs.invalidate_cache()
    assert len(fs.ls(f"{path}/labels", detail=False)) == 30


@pytest.mark.slow
def test_dvc_push_and_pull_through_the_seaweedfs_remote(seaweed: Any, tmp_path: Path) -> None:
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def sh(*args: str) -> None:
        subprocess.run([*dvc, *args], cwd=tmp_path, env=env, check=True, capture_output=True)

    (tmp_path / "data").mkdir()
    (tmp_path / "data/labels.json").write_text('{"frames": 3}')
    (tmp_path / "data/frame.png").write_bytes(b"\x89PNG fake bytes")
    sh("init", "--no-scm", "-q")
    sh("remote", "add", "-d", "seaweed", "s3://lamflow-test/dvcstore")
    sh("remote", "modify", "seaweed", "endpointurl", seaweed.endpoint)
    sh("add", "data")
    sh("push")
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / ".dvc/cache")
    sh("pull")
    assert (tmp_path / "data/labels.json").read_text() == '{"frames": 3}'
    assert (tmp_path / "data/frame.png").read_bytes() == b"\x89PNG fake bytes"
    config = (tmp_path / ".dvc/config").read_text()
    assert seaweed.creds.secret_key not in config  # credentials stay in the environment


def test_s3_up_env_down_generates_private_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamflow import s3server

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LAMFLOW_S3_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    port = s3server.free_port_pair(set())
    endpoint = s3server.up(tmp_path, port=port, bucket="firstbucket")
    try:
        assert endpoint == f"http://127.0.0.1:{port}"
        assert s3server.up(tmp_path, port=port) == endpoint  # idempotent
        stored = tmp_path / "credentials.env"
        assert stored.stat().st_mode & 0o777 == 0o600
        lines = dict(
            line.removeprefix("export ").split("=", 1) for line in s3server.env_lines(tmp_path)
        )
        assert lines["LAMFLOW_S3_ENDPOINT"] == endpoint
        assert lines["AWS_SECRET_ACCESS_KEY"] in stored.read_text()
        assert lines["AWS_SECRET_ACCESS_KEY"] not in (tmp_path / "weed.log").read_text()
    finally:
        assert s3server.down(tmp_path)
    assert not s3server.down(tmp_path)
