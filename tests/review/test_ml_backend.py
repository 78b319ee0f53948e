"""`lamflow ml-backend` on a tiny model, over real HTTP on loopback (uvicorn), with a stand-in
for Label Studio's file and task API: setup's refusals, predictions equal to `annotate`'s
labels, a bad frame failing alone, 503 past the queue, /health without a model, a newly
published model, and the webhook's seeds."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from lam.formats.labelstudio import brush_rle_to_mask, labeling_config
from lamflow.labelstudio_api import LabelStudioClient
from lamflow.ml_backend import PredictLimits, create_app
from lamflow.params import Params
from tasks.ml_backend import LamflowBackend
from tasks.ml_models import ModelFollower
from tasks.seed_set import list_seeds
from tests.review.helpers import CLASSES, brush_result
from tests.review.ml_backend_helpers import (
    FakeLabelStudio,
    make_fleet,
    serving,
    write_frames,
)

CONFIG = labeling_config(CLASSES)
TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fleet") / "root"
    params, model = make_fleet(root)
    return {"root": root, "params": params, "model": model}


@pytest.fixture()
def fake_ls() -> Any:
    fake = FakeLabelStudio(TOKEN)
    yield fake
    fake.close()


def _backend(root: Path, params: Params, fake: FakeLabelStudio | None, **kw: Any) -> LamflowBackend:
    models = ModelFollower(root=str(root), batch_size=params.annotate.batch_size)
    client = LabelStudioClient(fake.url, TOKEN, timeout=10) if fake else None
    return LamflowBackend(models, params, client, str(root), **kw)


def _predict(url: str, tasks: list[dict[str, Any]], config: str = CONFIG) -> requests.Response:
    body = {"tasks": tasks, "project": "1.1700000000", "label_config": config, "params": {}}
    return requests.post(f"{url}/predict", json=body, timeout=60)


def _decode(prediction: dict[str, Any]) -> np.ndarray:
    """A prediction's brush regions painted into (H, W) class ids, void elsewhere."""
    label = None
    for res in prediction["result"]:
        h, w = res["original_height"], res["original_width"]
        label = np.full((h, w), 255, np.uint8) if label is None else label
        mask = brush_rle_to_mask(res["value"]["rle"], h, w)
        assert not (mask & (label != 255)).any(), "regions overlap"
        label[mask] = CLASSES.names.index(res["value"]["brushlabels"][0])
    assert label is not None
    return label


def test_setup_refuses_unknown_names_and_configs_without_brush(fleet: dict[str, Any]) -> None:
    backend = _backend(fleet["root"], fleet["params"], None)
    with serving(create_app(backend)) as url:
        ok = requests.post(f"{url}/setup", json={"schema": CONFIG, "project": "1.1"}, timeout=30)
        assert ok.status_code == 200
        assert ok.json()["model_version"] == fleet["model"]["model_version"]
        unknown = CONFIG.replace('value="car"', 'value="bus"')
        bad = requests.post(f"{url}/setup", json={"schema": unknown}, timeout=30)
        assert bad.status_code == 400 and "'bus'" in bad.json()["error"]
        boxes = (
            '<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="box" toName="image"><Label value="car"/></RectangleLabels>'
            "</View>"
        )
        bad = requests.post(f"{url}/setup", json={"schema": boxes}, timeout=30)
        assert bad.status_code == 400 and "no <BrushLabels> tag" in bad.json()["error"]
        assert "RectangleLabels" in bad.json()["error"]
        # predict checks the config it is sent too
        assert _predict(url, [], unknown).status_code == 400


def test_predict_equals_annotate_and_a_bad_frame_fails_alone(
    fleet: dict[str, Any], fake_ls: FakeLabelStudio, tmp_path: Path
) -> None:
    from tasks.annotate import annotate

    frames = write_frames(tmp_path / "images", 6)
    fake_ls.files.update({f"7/{name}": data for name, data in frames.items()})
    annotate(
        fleet["model"]["model"],
        str(tmp_path / "images"),
        str(tmp_path / "out"),
        fleet["params"].annotate,
        progress=False,
    )
    tasks = [
        {"id": i + 1, "data": {"image": f"/data/upload/7/{name}"}}
        for i, name in enumerate(sorted(frames))
    ]
    tasks.insert(3, {"id": 99, "data": {"image": "/data/upload/7/missing.png"}})
    backend = _backend(fleet["root"], fleet["params"], fake_ls)
    with serving(create_app(backend)) as url:
        answer = _predict(url, tasks)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(tasks)
    version = fleet["model"]["model_version"]
    for task, item in zip(tasks, results):
        assert item["model_version"] == version
        if task["id"] == 99:
            assert "result" not in item and "404" in item["error"]
            continue
        stem = task["data"]["image"].rsplit("/", 1)[-1][:-4]
        want = np.array(Image.open(tmp_path / "out" / "labels" / f"{stem}.png"))
        conf = np.array(Image.open(tmp_path / "out" / "confidence" / f"{stem}.png"))
        assert np.array_equal(_decode(item), want), stem
        assert item["score"] == pytest.approx(conf.mean() / 255.0, abs=1e-5)
        for res in item["result"]:
            cid = CLASSES.names.index(res["value"]["brushlabels"][0])
            assert res["score"] == pytest.approx(conf[want == cid].mean() / 255.0, abs=1e-5)


class _Blocking:
    """A model whose predict waits until released (to fill the server's queue)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def health(self) -> dict[str, Any]:
        return {"model_version": "m"}

    def setup(self, label_config: str) -> str:
        return "m"

    def predict(self, tasks: list[dict[str, Any]], label_config: str) -> dict[str, Any]:
        self.started.release()
        self.release.wait(30)
        return {"results": [{"result": [], "model_version": "m"} for _ in tasks]}

    def webhook(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ignored"}

    def versions(self) -> list[str]:
        return ["m"]


def test_requests_past_the_queue_get_503_and_the_rest_are_answered() -> None:
    model = _Blocking()
    answers: list[requests.Response] = []

    def ask() -> None:
        answers.append(_predict(url, [{"id": 1}]))

    with serving(create_app(model, PredictLimits(workers=1, queue=1))) as url:
        first = threading.Thread(target=ask)
        first.start()
        assert model.started.acquire(timeout=10)  # one runs (and blocks) ...
        more = [threading.Thread(target=ask) for _ in range(3)]
        for t in more:
            t.start()
        for _ in range(200):  # ... one of these waits for it, the other two are turned away
            if len(answers) >= 2:
                break
            threading.Event().wait(0.05)
        refused = list(answers)
        assert [a.status_code for a in refused] == [503, 503]
        assert "busy" in refused[0].json()["error"]
        assert requests.get(f"{url}/health", timeout=5).status_code == 200  # health still answers
        model.release.set()
        for t in [first, *more]:
            t.join(30)
    assert sorted(a.status_code for a in answers) == [200, 200, 503, 503]


def test_health_reports_a_missing_or_unloadable_model(
    fleet: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "empty"
    backend = _backend(root, fleet["params"], None)
    with serving(create_app(backend)) as url:
        health = requests.get(f"{url}/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "DOWN"
        assert "no model published" in health.json()["error"]
        assert _predict(url, [{"id": 1, "data": {"image": "x"}}]).status_code == 503
        broken = tmp_path / "broken"
        broken.mkdir()
        shutil.copy(Path(fleet["model"]["model"]) / "config.json", broken / "config.json")
        (root / "state").mkdir(parents=True)
        (root / "state" / "model.json").write_text(json.dumps({"model": str(broken)}))
        health = requests.get(f"{url}/health", timeout=5)
        for _ in range(100):  # the load runs in the background; /health never waits for it
            if "loading" not in health.json().get("error", ""):
                break
            threading.Event().wait(0.1)
            health = requests.get(f"{url}/health", timeout=5)
        assert health.status_code == 503 and "head.safetensors" in health.json()["error"]


def test_a_newly_published_model_serves_the_next_request(
    fleet: dict[str, Any], fake_ls: FakeLabelStudio, tmp_path: Path
) -> None:
    from tasks.model_pointer import publish_model

    root = tmp_path / "root"
    params, first = make_fleet(root, iterations=9)  # another model than the fleet fixture's
    frames = write_frames(tmp_path / "images", 3)
    fake_ls.files.update({f"1/{name}": data for name, data in frames.items()})
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{n}"}} for i, n in enumerate(frames)]
    backend = _backend(root, params, fake_ls)
    with serving(create_app(backend)) as url:
        before = _predict(url, tasks).json()
        assert {r["model_version"] for r in before["results"]} == {first["model_version"]}
        publish_model(str(root), fleet["model"])  # another model, published by "the nightly run"
        after = _predict(url, tasks).json()
        versions = requests.get(f"{url}/versions", timeout=5).json()
    assert first["model_version"] != fleet["model"]["model_version"]
    assert {r["model_version"] for r in after["results"]} == {fleet["model"]["model_version"]}
    assert after["model_version"] == fleet["model"]["model_version"]
    assert versions["versions"] == [first["model_version"], fleet["model"]["model_version"]]


def test_webhook_makes_one_seed_even_when_delivered_twice(
    fleet: dict[str, Any], fake_ls: FakeLabelStudio, tmp_path: Path
) -> None:
    from tests.conftest import make_scene
    from tests.pipeline.helpers import png_bytes

    root = tmp_path / "root"
    shutil.copytree(fleet["root"] / "seeds", root / "seeds")
    before = len(list_seeds(str(root / "seeds")))
    _, lab = make_scene(301)
    fake_ls.files["5/frame.png"] = png_bytes(301)
    annotation = {
        "id": 41,
        "result": [brush_result(lab == 2, "car"), brush_result(lab == 1, "road")],
        "was_cancelled": False,
        "completed_by": 1,
        "created_at": "2026-12-07T10:00:00Z",
        "updated_at": "2026-12-07T10:00:00Z",
    }
    task = {"id": 17, "project": 5, "data": {"image": "/data/upload/5/frame.png"}}
    fake_ls.tasks[17] = {**task, "annotations": [annotation]}
    # what LS posts: the annotation and task as they were (the backend reads them back)
    event = {
        "action": "ANNOTATION_CREATED",
        "annotation": {**annotation, "task": 17},
        "task": task,
        "project": {"id": 5, "label_config": CONFIG},
    }
    models = ModelFollower(model_dir=fleet["model"]["model"])
    client = LabelStudioClient(fake_ls.url, TOKEN, timeout=10)
    backend = LamflowBackend(models, fleet["params"], client, str(root))
    with serving(create_app(backend, basic_auth=("ls", "secret"))) as url:
        for _ in range(2):
            answer = requests.post(f"{url}/webhook", json=event, timeout=5)  # no credentials
            assert answer.json() == {"status": "queued", "tasks": [17]}
            backend.wait_idle()
        other = requests.post(f"{url}/webhook", json={"action": "PROJECT_UPDATED"}, timeout=5)
        assert other.json()["status"] == "ignored"
        assert requests.get(f"{url}/health", timeout=5).status_code == 401  # the rest need them
    seeds = [s for s in list_seeds(str(root / "seeds")) if s.get("source") == "labelstudio"]
    assert len(list_seeds(str(root / "seeds"))) == before + 1
    assert [(s["stem"], s["task_id"], s["annotation_id"]) for s in seeds] == [
        ("ls5_task17", 17, 41)
    ]
    label = np.array(Image.open(root / "seeds" / "labels" / "ls5_task17.png"))
    assert np.array_equal(label == 2, lab == 2) and np.array_equal(label == 1, lab == 1)
    assert [o["status"] for o in backend.pulled] == ["added", "unchanged"]


def test_the_command_exits_with_one_line_when_the_model_does_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    assert main(["ml-backend", "--model", str(tmp_path / "nowhere")]) == 2
    assert main(["ml-backend", "--root", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2].startswith("lamflow: error: no model at ") and "config.json" in lines[-2]
    assert lines[-1].startswith("lamflow: error: no model published at ")
