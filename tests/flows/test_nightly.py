"""The nightly flow end to end on a Dask LocalCluster under one Prefect test harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.nightly import dask_runner, nightly, shared_prefect_api
from flows.state import acquire_lease, read_watermark
from lam.errors import LamflowError
from tests.pipeline.helpers import write_drop, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(params: Path, **kwargs: Any) -> dict[str, Any]:
    with shared_prefect_api():
        flow = nightly.with_options(task_runner=dask_runner("", workers=1))
        return flow(params_file=str(params), **kwargs)


def test_bad_params_fail_before_any_work(prefect_harness: None, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(f"data: {{root: {tmp_path / 'root'}}}\npipeline: {{lease_secs: 5}}\n")
    with pytest.raises(LamflowError, match="pipeline.lease_secs: unknown key"):
        nightly.with_options(task_runner=dask_runner("", workers=1))(params_file=str(params))
    assert not (tmp_path / "root").exists()


def test_nightly_labels_new_drops_once_and_skips_leased_ones(
    prefect_harness: None, tmp_path: Path, seed_set: Path
) -> None:
    root = tmp_path / "root"
    # norm_stats, as params.yaml sets it: each night's model adapts to its new drops
    params = write_params(
        tmp_path / "params.yaml", str(root), seed_set, train={"unlabeled_method": "norm_stats"}
    )
    write_drop(str(root), "d1", 4, bad=True)
    write_drop(str(root), "d2", 2)
    write_drop(str(root), "d3", 2)
    assert acquire_lease(str(root), "d3", "another-run", ttl=600)

    result = _run(params)

    assert result["trained"] and sorted(result["drops"]) == ["d1", "d2"]
    assert result["skipped"] == ["d3"]  # leased by another run: not labeled twice
    d1 = result["drops"]["d1"]
    assert (d1["frames"], d1["labeled"], d1["quarantined"], d1["shards"]) == (7, 4, 3, 3)
    assert d1["qc"] == "pass"
    labels = Path(d1["labels"])
    assert labels == root / "labels" / result["model_version"] / "d1"
    assert len(list((labels / "labels").iterdir())) == 4
    assert (labels / "qc.json").exists() and (Path(d1["export"]) / "index.json").exists()
    assert len(list((labels / "overlays").iterdir())) == 1
    assert read_watermark(str(root))["drives"] == ["d1", "d2"]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"drop-d1", "drop-d2"} <= keys

    again = _run(params)
    assert again["drops"] == {} and not again.get("trained")
    done = json.loads((root / "state/done/d1.json").read_text())
    assert done["labeled"] == 4

    # A new drop: the model adapts to its frames (train.unlabeled_method norm_stats), so it
    # is a new model; the same seeds, so older drops are not relabelled.
    write_drop(str(root), "d4", 2)
    third = _run(params)
    assert third["trained"] and third["model_version"] != result["model_version"]
    assert sorted(third["drops"]) == ["d4"] and third["relabeled"] == {}
    assert json.loads((root / "state/done/d4.json").read_text())["seed_key"] == done["seed_key"]


def test_a_drop_failing_qc_is_not_published_until_a_person_accepts_it(
    prefect_harness: None, tmp_path: Path, seed_set: Path
) -> None:
    from flows.state import accept_drop, done_drives

    root = tmp_path / "root"
    params = write_params(tmp_path / "params.yaml", str(root), seed_set, qc={"max_drift": 0.0})
    write_drop(str(root), "d1", 2)
    with pytest.raises(LamflowError, match="QC failed for drop\\(s\\) d1: not exported"):
        _run(params)
    assert not (root / "exports").exists() and done_drives(str(root)) == set()
    assert "last_success" not in read_watermark(str(root))

    accept_drop(str(root), "d1", by="test", note="drift expected: new city")
    result = _run(params)
    d1 = result["drops"]["d1"]
    assert d1["qc"] == "fail" and d1["accepted"]
    assert (Path(d1["export"]) / "index.json").exists() and done_drives(str(root)) == {"d1"}


def test_nightly_adapts_the_model_to_each_drop_when_asked(
    prefect_harness: None, tmp_path: Path, seed_set: Path
) -> None:
    """pipeline.adapt_per_drop: each drop is labelled by the model self-trained on its frames,
    stored per (model, drive, adapt params) and reused, never re-adapted, by a later run."""
    from flows.nightly import adapted_model
    from lamflow.params import load_params

    root = tmp_path / "root"
    params = write_params(
        tmp_path / "params.yaml",
        str(root),
        seed_set,
        pipeline={"adapt_per_drop": True},
        adapt={"max_frames": 2, "pixels_per_frame": 300, "rounds": 1},
    )
    write_drop(str(root), "d1", 3)

    result = _run(params)

    d1 = result["drops"]["d1"]
    assert d1["model_version"] != result["model_version"] and d1["adapt_seconds"] > 0
    assert Path(d1["labels"]) == root / "labels" / d1["model_version"] / "d1"
    assert len(list((Path(d1["labels"]) / "labels").iterdir())) == 3
    (stored,) = (root / "models" / "adapted" / result["model_version"] / "d1").iterdir()
    report = stored / "adapt_report.json"
    assert json.loads(report.read_text())["model_version"] == d1["model_version"]
    before = report.stat().st_mtime_ns
    model = {"model": result["model"], "model_version": result["model_version"]}
    images = str(root / "drops" / "d1" / "images")
    again = adapted_model(str(root), "d1", images, model, load_params(params))
    assert again["model_version"] == d1["model_version"] and again["model"] == str(stored)
    assert report.stat().st_mtime_ns == before


def test_s3_credentials_from_a_prefect_secret_block(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from lamflow.storage import _block_credentials, s3_options

    Secret(value={"aws_access_key_id": "AKBLOCK", "aws_secret_access_key": "s3cr3t"}).save(
        "lamflow-s3-test", overwrite=True
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("LAMFLOW_S3_CREDENTIALS_BLOCK", "lamflow-s3-test")
    _block_credentials.cache_clear()
    opts = s3_options()
    assert (opts["key"], opts["secret"]) == ("AKBLOCK", "s3cr3t")
    monkeypatch.setenv("LAMFLOW_S3_CREDENTIALS_BLOCK", "no-such-block")
    with pytest.raises(LamflowError, match="no Prefect Secret block 'no-such-block'"):
        s3_options()
    _block_credentials.cache_clear()


SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "edgenets"


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="no shared weights")
def test_nightly_on_the_source_network_shows_its_class_map(
    prefect_harness: None, tmp_path: Path, seed_set: Path
) -> None:
    """The product's default annotator (ESPNetv2 on Cityscapes, classes mapped by name onto
    the synthetic world's sky/road/car, plus model.vocabulary's corrected row) trains, labels
    a drop and reports its class map and weights licence in the run's review-loop artifact."""
    root = tmp_path / "root"
    # a person's correction: names leave Cityscapes' terrain unmapped; this row maps it
    vocabulary = tmp_path / "vocabulary.yaml"
    row = {"synset": "terrain", "target": "road", "similarity": 1.0, "source": "manual"}
    vocabulary.write_text(yaml.safe_dump({"source_mapping": {"cityscapes": {"rows": [row]}}}))
    model = {
        "backbone": "espnetv2_city",
        "backbone_options": {"width": 1.0, "input_size": [64, 128]},
        "out_stride": 2,
        "optou_steps": 0,
        "vocabulary": str(vocabulary),
    }
    params = write_params(tmp_path / "params.yaml", str(root), seed_set, model=model)
    write_drop(str(root), "d1", 2)

    result = _run(params)

    assert result["trained"] and result["drops"]["d1"]["labeled"] == 2
    config = json.loads((Path(result["model"]) / "config.json").read_text())
    rows = {r["source_class"]: r["target"] for r in config["extra"]["class_map"]["rows"]}
    assert rows["sky"] == "sky" and rows["road"] == "road" and rows["car"] == "car"
    assert rows["terrain"] == "road"  # model.vocabulary's manual row reached the nightly model
    assert config["extra"]["class_map"]["origin"].startswith(f"vocabulary {vocabulary}")
    assert "non-commercial" in config["extra"]["weights"]["licence"]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        loop = [a for a in client.read_artifacts() if a.key == "review-loop"]
    assert any("Class map" in str(a.data) and "non-commercial" in str(a.data) for a in loop)
