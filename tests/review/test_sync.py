"""review_pull against a real Label Studio: what becomes a seed, what is refused, what waits;
and the `files` route's inbox without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lam.formats.labelstudio import labeling_config, labels_to_tasks, review_task
from lamflow.labelstudio import LabelStudioServer
from lamflow.labelstudio_api import LabelStudioClient
from lamflow.params import ReviewParams
from lamflow.storage import sha256_bytes
from tasks.review_files import review_pull_files
from tasks.review_sync import review_pull
from tasks.seed_set import list_seeds
from tests.conftest import environment, make_scene
from tests.pipeline.helpers import TINY_CLASSES
from tests.review.helpers import CLASSES, brush_result, reviewer_annotate


def _world(tmp_path: Path, n: int) -> tuple[Path, Path, list[tuple[str, bytes, np.ndarray]]]:
    """ROOT with drop d1 of `n` synthetic frames, and classes.json."""
    root = tmp_path / "root"
    images = root / "drops" / "d1" / "images"
    images.mkdir(parents=True)
    frames = []
    for i in range(n):
        img, lab = make_scene(200 + i)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        (images / f"f{i}.png").write_bytes(buf.getvalue())
        frames.append((f"f{i}", buf.getvalue(), lab))
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(TINY_CLASSES))
    return root, classes, frames


@pytest.mark.integration
def test_pull_takes_finished_annotations_refuses_bad_ones_and_never_pulls_twice(
    labelstudio: LabelStudioServer, tmp_path: Path
) -> None:
    root, classes, frames = _world(tmp_path, 4)
    params = ReviewParams(backend="labelstudio", project="pull-rules")
    client = LabelStudioClient(labelstudio.url, labelstudio.creds.token)
    project = client.ensure_project(params.project, labeling_config(CLASSES))
    ids = {}
    for stem, data, lab in frames:
        url = client.upload_image(project, f"{stem}.png", data)
        task = review_task(url, stem, "d1", sha256_bytes(data), lab, CLASSES, "m", 0.5, ["test"])
        [ids[stem]] = client.import_tasks(project, [task])
    good, wrong_size, cancelled, untouched = (s for s, _, _ in frames)
    lab = frames[0][2]
    reviewer_annotate(client, ids[good], [brush_result(lab == 2, "car")])
    reviewer_annotate(client, ids[wrong_size], [brush_result(np.ones((32, 48), bool), "road")])
    reviewer_annotate(client, ids[cancelled], [], cancelled=True)

    with environment(labelstudio.env()):
        first = review_pull(str(root), str(classes), params)
        second = review_pull(str(root), str(classes), params)

    assert [s["frame"] for s in first["added"]] == [good]
    assert [(r["stem"], r["task_id"]) for r in first["rejected"]] == [(wrong_size, ids[wrong_size])]
    assert "annotation is 32x48, frame is 64x96" in first["rejected"][0]["reason"]
    assert first["skipped"] == [ids[cancelled]]
    assert untouched not in {s["stem"] for s in list_seeds(str(root / "seeds"))}
    seed = np.array(Image.open(root / "seeds" / "labels" / f"d1_{good}.png"))
    assert ((seed == 2) == (lab == 2)).all() and (seed[lab != 2] == 255).all()
    assert second["added"] == [] and second["rejected"] == [] and second["skipped"] == []
    assert second["unchanged"] == 2  # the seed and the refused one: each read once


def test_files_inbox_takes_only_annotated_tasks(tmp_path: Path) -> None:
    """`review.backend: files`: an export dropped into ROOT/review/inbox becomes seeds; tasks
    that carry only lamflow's prediction (nobody annotated them) are left out."""
    root, classes, frames = _world(tmp_path, 2)
    (stem_a, _, lab_a), (stem_b, _, lab_b) = frames
    tasks = labels_to_tasks([(stem_a, "x", lab_a), (stem_b, "x", lab_b)], CLASSES)
    tasks[0]["annotations"] = [{"id": 1, "result": tasks[0]["predictions"][0]["result"]}]
    inbox = root / "review" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "export.json").write_text(json.dumps(tasks))

    first = review_pull_files(str(root), str(classes))
    assert [s["frame"] for s in first["added"]] == [stem_a]
    assert first["added"][0]["source"] == "files"
    again = review_pull_files(str(root), str(classes))
    assert again["added"] == [] and again["unchanged"] == 1
