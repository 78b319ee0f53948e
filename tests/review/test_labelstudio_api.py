"""LabelStudioClient against a real Label Studio 1.23 (integration) and against fakes (unit)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from lam.formats.labelstudio import (
    annotation_to_label,
    brush_rle_to_mask,
    labeling_config,
    review_task,
)
from lamflow.labelstudio import LabelStudioServer, free_port
from lamflow.labelstudio_api import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioUnavailable,
)
from tests.conftest import make_scene
from tests.review.helpers import CLASSES, brush_result, keypoint_result, reviewer_annotate

CONFIG = labeling_config(CLASSES)


def _png(seed: int) -> tuple[bytes, np.ndarray]:
    import io

    from PIL import Image

    img, lab = make_scene(seed)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), lab


def _push(client: LabelStudioClient, project: int, seed: int, score: float) -> tuple[int, str]:
    """Upload a synthetic frame and import its review task; returns (task id, sha256)."""
    data, lab = _png(seed)
    url = client.upload_image(project, f"drive1_{seed:04d}.png", data)
    sha = f"{seed:064x}"
    task = review_task(url, f"drive1_{seed:04d}", "drive1", sha, lab, CLASSES, "m@1", score, [])
    [task_id] = client.import_tasks(project, [task])
    return task_id, sha


# -- against the real server -----------------------------------------------------------------
@pytest.mark.integration
def test_project_and_view_are_idempotent(ls_client: LabelStudioClient) -> None:
    assert ls_client.check()["id"] >= 1
    project = ls_client.ensure_project("lamflow test: idempotent", CONFIG)
    other = ls_client.ensure_project(
        "lamflow test: idempotent 2", CONFIG
    )  # title filter is icontains
    assert ls_client.ensure_project("lamflow test: idempotent", "<View/>") == project != other
    view = ls_client.ensure_view(project)
    assert ls_client.ensure_view(project) == view
    assert ls_client.ensure_view(project, "another tab") != view


@pytest.mark.integration
def test_pushed_prediction_round_trips_and_the_view_sorts_by_score(
    labelstudio: LabelStudioServer, ls_client: LabelStudioClient
) -> None:
    project = ls_client.ensure_project("lamflow test: push", CONFIG)
    data, lab = _png(0)
    url = ls_client.upload_image(project, "drive1_0000.png", data)
    assert url.startswith(f"/data/upload/{project}/") and url.endswith("-drive1_0000.png")
    served = requests.get(
        labelstudio.url + url,
        headers={"Authorization": f"Token {labelstudio.creds.token}"},
        timeout=10,
    )
    assert served.status_code == 200 and served.content == data
    assert ls_client.task_index(project) == {}  # the upload created no task

    task = review_task(
        url, "drive1_0000", "drive1", "a" * 64, lab, CLASSES, "m@1", 0.25, ["x", "y"]
    )
    [low] = ls_client.import_tasks(project, [task])
    high, sha_high = _push(ls_client, project, 1, 0.9)

    index = ls_client.task_index(project)
    assert {sha: t["id"] for sha, t in index.items()} == {"a" * 64: low, sha_high: high}
    assert index["a" * 64]["data"] == task["data"]

    back = ls_client.get_task(low)
    [pred] = back["predictions"]
    assert (pred["model_version"], pred["score"]) == ("m@1", 0.25)
    decoded = np.full(lab.shape, 255, np.uint8)
    for res in pred["result"]:
        mask = brush_rle_to_mask(res["value"]["rle"], res["original_height"], res["original_width"])
        decoded[mask] = CLASSES.names.index(res["value"]["brushlabels"][0])
    assert (decoded == lab).all()

    view = ls_client.ensure_view(project)
    ordered = requests.get(
        f"{labelstudio.url}/api/tasks",
        params={"project": project, "view": view},
        headers={"Authorization": f"Token {labelstudio.creds.token}"},
        timeout=10,
    ).json()["tasks"]
    assert [t["id"] for t in ordered] == [high, low]
    assert ls_client.finished_tasks(project) == []


@pytest.mark.integration
def test_reviewer_annotations_and_skips_show_up_as_finished(ls_client: LabelStudioClient) -> None:
    project = ls_client.ensure_project("lamflow test: finished", CONFIG)
    done, _ = _push(ls_client, project, 2, 0.5)
    skipped, _ = _push(ls_client, project, 3, 0.4)
    untouched, _ = _push(ls_client, project, 4, 0.3)
    h, w = make_scene(2)[1].shape
    road = np.zeros((h, w), bool)
    road[h // 2 :] = True
    result = [brush_result(road, "road"), keypoint_result(10, 5, "sky", h, w)]
    ann_id = reviewer_annotate(ls_client, done, result)
    skip_id = reviewer_annotate(ls_client, skipped, [], cancelled=True)

    finished = {t["id"]: t for t in ls_client.finished_tasks(project)}
    assert sorted(finished) == sorted([done, skipped]) and untouched not in finished
    [ann] = finished[done]["annotations"]
    assert ann["id"] == ann_id and ann["was_cancelled"] is False
    assert ann["completed_by"] == ls_client.check()["id"]
    assert ann["created_at"] and ann["updated_at"]
    assert finished[done]["data"]["frame"] == "drive1_0002"
    label = annotation_to_label(ann["result"], CLASSES, h, w, point_radius=2)
    assert (label[road] == 1).all() and label[5, 10] == 0 and (label == 255).sum() > 0
    [skip] = finished[skipped]["annotations"]
    assert skip["id"] == skip_id and skip["was_cancelled"] is True


@pytest.mark.integration
def test_wrong_token_is_an_auth_error_that_hides_the_token(labelstudio: LabelStudioServer) -> None:
    token = "not-the-token-0123456789"
    with pytest.raises(LabelStudioAuthError) as err:
        LabelStudioClient(labelstudio.url, token).check()
    text = str(err.value)
    assert "LABEL_STUDIO_API_KEY" in text and labelstudio.url in text and "401" in text
    assert token not in text and labelstudio.creds.token not in text


@pytest.mark.integration
def test_bad_request_names_method_path_status_and_reason(ls_client: LabelStudioClient) -> None:
    project = ls_client.ensure_project("lamflow test: errors", CONFIG)
    with pytest.raises(
        LabelStudioError, match=rf"POST /api/projects/{project}/import: HTTP 400: .*image"
    ):
        ls_client.import_tasks(project, [{"data": {"frame": "no image"}}])
    with pytest.raises(
        LabelStudioError, match=r"POST /api/projects/999999/import: HTTP 404: \(HTML"
    ):
        ls_client.upload_image(999999, "a.png", b"x")


@pytest.mark.integration
def test_restart_keeps_projects_and_tasks(
    labelstudio: LabelStudioServer, ls_client: LabelStudioClient
) -> None:
    project = ls_client.ensure_project("lamflow test: restart", CONFIG)
    _, sha = _push(ls_client, project, 5, 0.5)
    labelstudio.stop()
    started = time.monotonic()
    labelstudio.start(timeout=120)
    print(f"Label Studio restart took {time.monotonic() - started:.1f}s")
    assert ls_client.ensure_project("lamflow test: restart", CONFIG) == project
    assert sha in ls_client.task_index(project)


# -- without a server ------------------------------------------------------------------------
def test_nothing_listening_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        LabelStudioUnavailable, match=f"GET /api/current-user/whoami: cannot connect .*{url}"
    ):
        LabelStudioClient(url, "whatever-token").check()


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as sock:  # accepts connections (backlog) but never replies
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        client = LabelStudioClient(
            f"http://127.0.0.1:{sock.getsockname()[1]}", "t" * 10, timeout=0.5
        )
        with pytest.raises(
            LabelStudioUnavailable, match="no answer .* within 0s|no answer .* within 1s"
        ):
            client.check()


class _Fixed(BaseHTTPRequestHandler):
    replies: dict[str, tuple[int, str, str]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status, ctype, body = self.replies[self.path.split("?")[0]]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def fake_ls() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fixed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_5xx_is_unavailable_and_long_errors_are_truncated(fake_ls: str) -> None:
    _Fixed.replies = {
        "/api/current-user/whoami": (502, "text/plain", "bad gateway " * 100),
        "/api/dm/views": (403, "application/json", '{"detail": "You do not have permission"}'),
    }
    client = LabelStudioClient(fake_ls, "secret-token-value")
    with pytest.raises(
        LabelStudioUnavailable, match="GET /api/current-user/whoami: HTTP 502: bad gateway"
    ) as err:
        client.check()
    assert len(str(err.value)) < 400 and str(err.value).endswith("...")
    with pytest.raises(LabelStudioAuthError, match="HTTP 403 .*LABEL_STUDIO_API_KEY .*permission"):
        client.ensure_view(1)


def test_from_env_names_the_missing_variable() -> None:
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY is not set"):
        LabelStudioClient.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:8080"})
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL is not set"):
        LabelStudioClient.from_env({"LABEL_STUDIO_API_KEY": "abcdefgh"})
    client = LabelStudioClient.from_env(
        {"LABEL_STUDIO_URL": "http://h:1/", "LABEL_STUDIO_API_KEY": "abcdefgh"}
    )
    assert client.url == "http://h:1" and "abcdefgh" not in repr(client)
