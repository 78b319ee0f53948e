"""The nightly review loop through a real Label Studio, on a few CamVid frames.

Night 1 labels a drop and pushes its most uncertain frames; the test answers as a reviewer
(one painted frame, one clicked frame). Night 2 pulls them into the seed set, retrains,
relabels night 1's drop under the new model (the old labels stay), labels and pushes its own
drop, and exports. A server that is down skips review but never labeling, and the next run
catches up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.formats.labelstudio import review_task
from lamflow.labelstudio import LabelStudioServer, free_port
from lamflow.labelstudio_api import LabelStudioClient
from tests.conftest import environment
from tests.review.helpers import keypoint_result, reviewer_annotate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEEDS = ["0006R0_f03150", "0001TP_008040"]


def _params(tmp: Path, root: Path, camvid: Path, project: str, **review: Any) -> Path:
    import yaml

    data = {
        "data": {"root": str(root), "camvid": str(camvid)},
        "train": {"seeds": SEEDS, "iterations": 6, "batch_views": 2, "max_pixels": 20000},
        "annotate": {"shard_size": 4, "batch_size": 2},
        "pipeline": {"dask_workers": 1, "overlays_per_drop": 1},
        "qc": {"min_mean_confidence": 0.0, "max_low_confidence_fraction": 1.0, "max_drift": 1.0},
        "review": {
            "backend": "labelstudio",
            "budget_per_drop": 2,
            "project": project,
            "retries": 0,
            **review,
        },
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _drop(root: Path, camvid: Path, drive: str, stems: list[str]) -> None:
    dest = root / "drops" / drive / "images"
    dest.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        shutil.copy(camvid / "train" / "images" / f"{stem}.jpg", dest)


def _nightly(params: Path) -> dict[str, Any]:
    from flows.nightly import dask_runner, nightly, shared_prefect_api

    with shared_prefect_api():
        return nightly.with_options(task_runner=dask_runner("", 1, processes=False))(
            params_file=str(params)
        )


def _gt(camvid: Path, stem: str) -> np.ndarray:
    return np.array(Image.open(camvid / "train" / "labels" / f"{stem}.png"))


def test_two_nights_push_answer_pull_retrain_relabel_export(
    prefect_harness: None,
    labelstudio: LabelStudioServer,
    camvid: Path,
    tmp_path: Path,
) -> None:
    classes = ClassList.from_json(json.loads((camvid / "classes.json").read_text()))
    root = tmp_path / "root"
    params = _params(tmp_path, root, camvid, "loop-two-nights")
    _drop(root, camvid, "0016E5-a", ["0016E5_00390", "0016E5_00420", "0016E5_01200"])
    client = LabelStudioClient(labelstudio.url, labelstudio.creds.token)

    with environment(labelstudio.env()):
        night1 = _nightly(params)
        push1 = night1["review"]["push"]["drops"]["0016E5-a"]
        assert night1["review"]["pull"]["status"] == "ok" and len(push1["tasks"]) == 2
        tasks = {t["data"]["frame"]: t for t in client.task_index(push1["project"]).values()}
        assert sorted(tasks) == sorted(r["stem"] for r in push1["tasks"])
        first = push1["tasks"][0]
        task = tasks[first["stem"]]
        assert task["data"]["drive"] == "0016E5-a" and task["data"]["reasons"]
        assert task["data"]["image"].startswith("/data/upload/")

        # the same drop again pushes nothing twice (idempotent by frame)
        from tasks.review_sync import pushed_url, review_push

        (Path(pushed_url(str(root), "0016E5-a"))).unlink()
        from lamflow.params import load_params

        p = load_params(params)
        again = review_push(
            str(root),
            "0016E5-a",
            night1["drops"]["0016E5-a"]["labels"],
            str(camvid / "classes.json"),
            p.review,
        )
        assert again["tasks"] == [] and len(again["already"]) == 2

        # the reviewer: paints one frame with its ground truth, clicks twice on the other
        painted, clicked = push1["tasks"][0]["stem"], push1["tasks"][1]["stem"]
        dense = review_task("", painted, "", "", _gt(camvid, painted), classes, "gt", 0.0, [])
        reviewer_annotate(client, tasks[painted]["id"], dense["predictions"][0]["result"])
        clicks = [
            keypoint_result(100, 50, "sky", 360, 480),
            keypoint_result(240, 300, "road", 360, 480),
        ]
        reviewer_annotate(client, tasks[clicked]["id"], clicks)

        _drop(root, camvid, "0016E5-b", ["0016E5_02400", "0016E5_04350"])
        night2 = _nightly(params)

    pull = night2["review"]["pull"]
    assert sorted(s["frame"] for s in pull["added"]) == sorted([painted, clicked])
    assert night2["trained"] and night2["seeds"] == 4
    assert night2["model_version"] != night1["model_version"]
    assert night2["model_before"] == night1["model_version"]
    assert sorted(night2["relabeled"]) == ["0016E5-a"]
    old = root / "labels" / night1["model_version"] / "0016E5-a" / "labels"
    new = root / "labels" / night2["model_version"] / "0016E5-a" / "labels"
    assert len(list(old.glob("*.png"))) == 3 and len(list(new.glob("*.png"))) == 3
    assert (root / "exports" / night2["model_version"] / "0016E5-b" / "index.json").exists()
    assert len(night2["review"]["push"]["drops"]["0016E5-b"]["tasks"]) == 2

    seeds = root / "seeds"
    prov = json.loads((seeds / "provenance" / f"0016E5-a_{clicked}.json").read_text())
    assert prov["source"] == "labelstudio" and prov["task_id"] == tasks[clicked]["id"]
    assert prov["drive"] == "0016E5-a" and prov["annotator"] is not None
    sparse = np.array(Image.open(seeds / "labels" / f"0016E5-a_{clicked}.png"))
    assert sparse[50, 100] == classes.names.index("sky")
    assert sparse[300, 240] == classes.names.index("road")
    assert (sparse == classes.ignore_index).mean() > 0.99  # clicks: the rest stays void
    dense_seed = np.array(Image.open(seeds / "labels" / f"0016E5-a_{painted}.png"))
    gt = _gt(camvid, painted)
    assert (dense_seed == gt).all(), "push -> annotate -> pull must give back the same mask"

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts()
    loop = [a for a in artifacts if a.key == "review-loop"]
    assert loop and any("Seeds added:** 2" in str(a.data) for a in loop)
    assert any("data:image/jpeg;base64" in str(a.data) for a in loop), "overlays of pushes"
    review_a = [str(a.data) for a in artifacts if a.key == "review-0016e5-a"]
    assert review_a and painted in review_a[0] and "data:image/jpeg;base64" in review_a[0]

    with environment(labelstudio.env()):
        night3 = _nightly(params)
    assert night3["review"]["pull"]["added"] == [] and night3["review"]["pull"]["unchanged"] == 2
    assert not night3["trained"] and night3["relabeled"] == {}


def test_server_down_skips_review_not_labeling_and_the_next_run_catches_up(
    prefect_harness: None,
    labelstudio: LabelStudioServer,
    camvid: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    params = _params(tmp_path, root, camvid, "loop-server-down", retries=1, retry_delay_seconds=0)
    _drop(root, camvid, "0016E5-c", ["0016E5_01800", "0016E5_04500"])
    down = {
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}",
        "LABEL_STUDIO_API_KEY": labelstudio.creds.token,
    }
    with environment(down):
        night1 = _nightly(params)
    night1_run = night1["run"]
    assert night1["drops"]["0016E5-c"]["labeled"] == 2
    assert night1["review"]["pull"]["status"] == "skipped"
    assert night1["review"]["push"]["status"] == "skipped"
    assert not (root / "review" / "pushed" / "0016E5-c.json").exists()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        runs = [
            r
            for r in prefect.read_task_runs()
            if str(r.flow_run_id) == night1_run and r.name.startswith("review_pu")
        ]
    assert runs and all(r.run_count == 2 for r in runs), "an unreachable server is retried"

    with environment(labelstudio.env()):
        night2 = _nightly(params)
    assert night2["drops"] == {}  # nothing new to label ...
    assert len(night2["review"]["push"]["drops"]["0016E5-c"]["tasks"]) == 2  # ... but pushed now


def test_a_refused_token_labels_everything_then_fails_the_run_naming_the_variable(
    prefect_harness: None,
    labelstudio: LabelStudioServer,
    camvid: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    params = _params(tmp_path, root, camvid, "loop-bad-token")
    _drop(root, camvid, "0016E5-d", ["0016E5_04680"])
    bad = {"LABEL_STUDIO_URL": labelstudio.url, "LABEL_STUDIO_API_KEY": "not-the-token"}
    with environment(bad), pytest.raises(LamflowError, match="LABEL_STUDIO_API_KEY") as err:
        _nightly(params)
    assert "not-the-token" not in str(err.value)
    assert (root / "state" / "done" / "0016E5-d.json").exists()  # labeled all the same
