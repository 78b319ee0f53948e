"""A small REST client for the parts of Label Studio (1.23) the review loop uses.

We talk HTTP (`requests`) rather than import `label_studio_sdk`, which lives in Label Studio's own
venv with pins that clash with ours. The client makes exactly one request per call, always with a
timeout, and never retries: the caller (a Prefect task with `retries=`) decides, and tells a
retryable failure (`LabelStudioUnavailable`: refused, timed out, HTTP 5xx) from a permanent one
(`LabelStudioAuthError`, other `LabelStudioError`s). Error messages name the method, the path,
the HTTP status and Label Studio's own error text (truncated); never the token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import requests

from lam.errors import LamflowError

_PAGE_SIZE = 100
_ERROR_TEXT = 300  # characters of Label Studio's error text kept in our messages

# Data Manager filter: tasks with a submitted annotation, or skipped (a cancelled annotation).
_FINISHED_QUERY = {
    "filters": {
        "conjunction": "or",
        "items": [
            {
                "filter": "filter:tasks:total_annotations",
                "operator": "greater",
                "type": "Number",
                "value": 0,
            },
            {
                "filter": "filter:tasks:cancelled_annotations",
                "operator": "greater",
                "type": "Number",
                "value": 0,
            },
        ],
    }
}


class LabelStudioError(LamflowError):
    """Label Studio answered, but not as expected (bad request, missing project, ...)."""


class LabelStudioUnavailable(LabelStudioError):
    """Connection refused, timed out or HTTP 5xx: worth retrying later."""


class LabelStudioAuthError(LabelStudioError):
    """HTTP 401/403: the token in LABEL_STUDIO_API_KEY is wrong for this server."""


def _error_text(resp: requests.Response) -> str:
    """Label Studio's own explanation: `validation_errors` or `detail` of its JSON error body."""
    try:
        body = resp.json()
    except ValueError:
        if "html" in resp.headers.get("content-type", ""):
            return "(HTML error page)"  # e.g. 404 on an unknown project: a full web page
        text = " ".join(resp.text.split())
    else:
        if isinstance(body, dict):
            found = body.get("validation_errors") or body.get("detail") or body
            text = found if isinstance(found, str) else json.dumps(found)
        else:
            text = json.dumps(body)
    return text if len(text) <= _ERROR_TEXT else text[: _ERROR_TEXT - 3] + "..."


class LabelStudioClient:
    """One Label Studio server and API token (`Authorization: Token <key>`, legacy tokens)."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"LABEL_STUDIO_URL must start with http(s)://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Token {token}"

    def __repr__(self) -> str:  # never print the token
        return f"LabelStudioClient(url={self.url!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LabelStudioClient:
        """Client for LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (see `lamflow.labelstudio env`)."""
        env = os.environ if environ is None else environ
        for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
            if not env.get(name):
                raise LabelStudioError(
                    f"{name} is not set: eval $(python -m lamflow.labelstudio env) "
                    "after `make labelstudio-up`, or point it at your Label Studio"
                )
        return cls(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"])

    # -- transport ---------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP call -> its 2xx response, or one of our errors."""
        where = f"{method} {path}"
        try:
            resp = self._session.request(
                method, self.url + path, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.Timeout as exc:
            raise LabelStudioUnavailable(
                f"{where}: no answer from {self.url} within {self.timeout:.0f}s"
            ) from exc
        except requests.ConnectionError as exc:
            raise LabelStudioUnavailable(
                f"{where}: cannot connect to Label Studio at {self.url} ({type(exc).__name__})"
            ) from exc
        except requests.RequestException as exc:  # a broken stream, a bad URL, ...
            raise LabelStudioUnavailable(
                f"{where}: request to {self.url} failed ({type(exc).__name__})"
            ) from exc
        status = resp.status_code
        if status in (401, 403):
            raise LabelStudioAuthError(
                f"{where}: HTTP {status} from {self.url}: check LABEL_STUDIO_API_KEY "
                f"({_error_text(resp)})"
            )
        if status >= 500:
            raise LabelStudioUnavailable(f"{where}: HTTP {status}: {_error_text(resp)}")
        if status >= 300:
            raise LabelStudioError(f"{where}: HTTP {status}: {_error_text(resp)}")
        return resp

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One HTTP call -> decoded JSON body (None if empty), or one of our errors."""
        resp = self._send(method, path, **kwargs)
        where, status = f"{method} {path}", resp.status_code
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise LabelStudioError(
                f"{where}: HTTP {status} but the body is not JSON: {_error_text(resp)}"
            ) from exc

    def _pages(self, path: str, params: dict[str, Any], key: str) -> Iterator[dict[str, Any]]:
        """Items of a page-numbered listing; stops at the last page (LS answers 404 past it)."""
        page, seen = 1, 0
        while True:
            body = self._request(
                "GET", path, params=params | {"page": page, "page_size": _PAGE_SIZE}
            )
            items = body.get(key, []) if isinstance(body, dict) else []
            yield from items
            seen += len(items)
            total = body.get("total", body.get("count")) if isinstance(body, dict) else None
            if not items or len(items) < _PAGE_SIZE or (total is not None and seen >= total):
                return
            page += 1

    # -- API -----------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """The token's user (`whoami`): proves the URL and the token before any work."""
        user = self._request("GET", "/api/current-user/whoami")
        if not isinstance(user, dict):
            raise LabelStudioError(f"GET /api/current-user/whoami: unexpected answer {user!r}")
        return user

    def ensure_project(self, title: str, label_config: str) -> int:
        """Id of the project titled exactly `title`, created with `label_config` if absent.

        An existing project keeps its config: a reviewer may have edited it in the UI.
        """
        # `?title=` is a case-insensitive substring filter, so match exactly here.
        for project in self._pages("/api/projects", {"title": title}, "results"):
            if project.get("title") == title:
                return int(project["id"])
        created = self._request(
            "POST", "/api/projects", json={"title": title, "label_config": label_config}
        )
        return int(created["id"])

    def ensure_view(self, project: int, title: str = "lamflow: review priority") -> int:
        """Id of the Data Manager tab `title`, tasks ordered by prediction score, highest first.

        Our push sets each prediction's score to its review priority, so this tab is the
        reviewer's work queue.
        """
        views = self._request("GET", "/api/dm/views", params={"project": project}) or []
        for view in views:
            if view.get("data", {}).get("title") == title:
                return int(view["id"])
        created = self._request(
            "POST",
            "/api/dm/views",
            json={
                "project": project,
                "data": {"title": title, "ordering": ["-tasks:predictions_score"]},
            },
        )
        return int(created["id"])

    def upload_image(self, project: int, filename: str, data: bytes) -> str:
        """Store an image in Label Studio without creating a task; returns the URL it serves.

        The URL (e.g. "/data/upload/3/ab12cd34-frame.jpg") is relative to the server and needs
        the reviewer's session to load, so frames never have to be exposed elsewhere.
        """
        path = f"/api/projects/{project}/import"
        body = self._request(
            "POST",
            path,
            params={"commit_to_project": "false"},
            files={"file": (filename, data, "application/octet-stream")},
        )
        ids = body.get("file_upload_ids") if isinstance(body, dict) else None
        if not ids:
            raise LabelStudioError(f"POST {path}: no file_upload_ids in the answer for {filename}")
        upload = self._request("GET", f"/api/import/file-upload/{int(ids[0])}")
        return "/data/" + str(upload["file"]).lstrip("/")

    def task_index(self, project: int) -> dict[str, dict[str, Any]]:
        """Every task of the project keyed by `data.sha256` (tasks without one are skipped)."""
        index: dict[str, dict[str, Any]] = {}
        params = {"project": project, "resolve_uri": "false"}
        for task in self._pages("/api/tasks", params, "tasks"):
            sha = task.get("data", {}).get("sha256")
            if sha:
                index[str(sha)] = task
        return index

    def get_task(self, task_id: int) -> dict[str, Any]:
        """One task's full JSON: data, predictions and annotations."""
        task = self._request("GET", f"/api/tasks/{task_id}")
        if not isinstance(task, dict):
            raise LabelStudioError(f"GET /api/tasks/{task_id}: unexpected answer {task!r}")
        return task

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks (each may carry inline "predictions"); returns their new ids in order."""
        if not tasks:
            return []
        path = f"/api/projects/{project}/import"
        body = self._request("POST", path, params={"return_task_ids": "true"}, json=tasks)
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if ids is None or len(ids) != len(tasks):
            raise LabelStudioError(
                f"POST {path}: sent {len(tasks)} tasks, got ids for "
                f"{'none' if ids is None else len(ids)}"
            )
        return [int(i) for i in ids]

    def finished_tasks(self, project: int) -> list[dict[str, Any]]:
        """Full JSON of every task with an annotation or a skip (`was_cancelled`) on it.

        Each task carries `data`, `id` and `annotations` (with `result`, `was_cancelled`,
        `completed_by`, `created_at`, `updated_at`, `id`); filtered by the server.
        """
        params = {
            "project": project,
            "fields": "all",
            "resolve_uri": "false",
            "query": json.dumps(_FINISHED_QUERY),
        }
        return list(self._pages("/api/tasks", params, "tasks"))

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], cancelled: bool = False
    ) -> int:
        """Submit (or, with `cancelled`, skip) an annotation as the token's user; returns its id.

        What the editor's Submit / Skip buttons send; used by the benchmark's simulated reviewer.
        """
        body = self._request(
            "POST",
            f"/api/tasks/{task_id}/annotations",
            json={"result": result, "was_cancelled": cancelled},
        )
        return int(body["id"])

    def download(self, path: str) -> bytes:
        """The bytes Label Studio serves at `path`, a URL of this server or relative to it
        ("/data/upload/3/ab-frame.jpg", "/data/local-files/?d=drive/frame.jpg"): the
        files of tasks, which need the token's user to have access to their project."""
        if path.startswith(self.url + "/"):
            path = path[len(self.url) :]
        if not path.startswith("/"):
            raise LabelStudioError(f"{path!r} is not a path on Label Studio at {self.url}")
        return self._send("GET", path).content

    def connect_ml_backend(self, project: int, url: str, title: str = "lamflow") -> int:
        """Connect the ML backend at `url` to `project` (Label Studio checks its /health and
        /setup first, and adds a webhook to url/webhook); returns the connection's id."""
        body = self._request(
            "POST",
            "/api/ml",
            json={"project": project, "url": url, "title": title, "is_interactive": False},
        )
        return int(body["id"])
