"""`lamflow ml-backend` connected to a real Label Studio 1.23 through its API: Label Studio
asks it for predictions of imported frames and stores them (each the frame's `annotate`
labels, pixel for pixel), and an annotation submitted in the project reaches the backend's
webhook and becomes one seed of ROOT/seeds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lam.formats.labelstudio import brush_rle_to_mask, labeling_config
from lamflow.labelstudio import LabelStudioServer
from lamflow.labelstudio_api import LabelStudioClient
from lamflow.ml_backend import create_app
from tasks.ml_backend import LamflowBackend
from tasks.ml_models import ModelFollower
from tasks.seed_set import list_seeds
from tests.conftest import make_scene
from tests.review.helpers import CLASSES, brush_result, reviewer_annotate
from tests.review.ml_backend_helpers import make_fleet, serving, write_frames

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _labels(prediction: dict) -> np.ndarray:
    label = None
    for res in prediction["result"]:
        h, w = res["original_height"], res["original_width"]
        label = np.full((h, w), 255, np.uint8) if label is None else label
        label[brush_rle_to_mask(res["value"]["rle"], h, w)] = CLASSES.names.index(
            res["value"]["brushlabels"][0]
        )
    assert label is not None
    return label


def test_label_studio_retrieves_predictions_and_annotations_become_seeds(
    labelstudio: LabelStudioServer, tmp_path: Path
) -> None:
    from tasks.annotate import annotate

    root = tmp_path / "root"
    params, model = make_fleet(root)
    frames = write_frames(tmp_path / "images", 5)
    annotate(
        model["model"],
        str(tmp_path / "images"),
        str(tmp_path / "out"),
        params.annotate,
        progress=False,
    )
    client = LabelStudioClient(labelstudio.url, labelstudio.creds.token, timeout=60)
    backend = LamflowBackend(
        ModelFollower(root=str(root), batch_size=params.annotate.batch_size),
        params,
        client,
        str(root),
    )
    backend.models.current()  # as `lamflow ml-backend` does before it listens
    with serving(create_app(backend)) as url:
        project = client.ensure_project("ml-backend", labeling_config(CLASSES))
        names = sorted(frames)
        tasks = [
            {"data": {"image": client.upload_image(project, name, frames[name])}} for name in names
        ]
        ids = client.import_tasks(project, tasks)  # no predictions
        client.connect_ml_backend(project, url)
        client._request(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        for task_id, name in zip(ids, names):
            task = client.get_task(task_id)
            [prediction] = task["predictions"]
            assert prediction["model_version"] == model["model_version"]
            want = np.array(Image.open(tmp_path / "out" / "labels" / name))
            assert np.array_equal(_labels(prediction), want), name

        _, lab = make_scene(300)  # frame_00's scene
        reviewer_annotate(client, ids[0], [brush_result(lab == 2, "car")])
        deadline = time.monotonic() + 60
        while not backend.pulled and time.monotonic() < deadline:
            time.sleep(0.2)  # LS posts its webhook while it answers the submit, or just after
        backend.wait_idle()
    seeds = [s for s in list_seeds(str(root / "seeds")) if s.get("source") == "labelstudio"]
    assert [(s["task_id"], s["project"]) for s in seeds] == [(ids[0], project)]
    seed = np.array(Image.open(root / "seeds" / "labels" / f"{seeds[0]['stem']}.png"))
    assert np.array_equal(seed == 2, lab == 2) and (seed[lab != 2] == 255).all()
    assert [p["status"] for p in backend.pulled] == ["added"]
