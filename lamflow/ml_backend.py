"""The server half of Label Studio's ML-backend protocol (1.23), for any model.

Label Studio's client is `label_studio/ml/api_connector.py` (`MLApi`); what it sends and reads:

    GET  /health    LS: timeout 1 s; any HTTP error marks the backend disconnected, 401
                    says "authentication parameters ... incorrect".
                    -> 200 {"status": "UP", "model_class", "model_version"}, or
                       503 {"status": "DOWN", "error"} when no model can be served
    POST /setup     {"project": "ID.TIMESTAMP", "schema": label config XML, "hostname",
                    "access_token", "extra_params"}; timeout 3 s. LS keeps the answer's
                    "model_version" and skips tasks that already hold a prediction of it.
                    -> 200 {"model_version"}, or 400 {"error"} (refused config)
    POST /predict   {"tasks": [task JSON], "project", "label_config", "params"}; timeout 100 s
                    (ML_TIMEOUT_PREDICT). -> 200 {"results": [one per task, in order], ...};
                    LS stores each item's "result", "score", "model_version", and skips (logs)
                    an item without "result": that is how one task fails alone.
    POST /webhook   LS's own webhook, which it creates at URL/webhook when the backend is
                    connected (all actions, with payload; timeout 1 s, WEBHOOK_TIMEOUT), and
                    {"action": "START_TRAINING", "project": {...}} from its Train button.
    POST /train     the legacy train call (LS sends it unless that feature flag is on).
    GET  /versions  -> {"versions": [...], "model_version"}
    POST /validate  {"config"} -> as /setup, without a project.

An error is a JSON body {"error": message} with a 4xx/5xx status; LS itself shows only the
status line, so the message is also logged here. Authentication: LS's "Basic Auth" option
sends HTTP basic credentials on every call but the webhook (its webhooks carry no
credentials), so with `basic_auth` set every route but /webhook requires them; the webhook
handler must then trust only what it reads back from Label Studio with its own token.

Load: /predict runs at most `PredictLimits.workers` requests at a time and lets
`PredictLimits.queue` more wait; past that it answers 503 at once (LS's own retries come
later), so a burst can neither pile up threads nor run the cores out of memory.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lam.errors import LamflowError

log = logging.getLogger(__name__)


class ModelUnavailable(LamflowError):
    """No model can be served right now (none published, or it does not load)."""


class BackendModel(Protocol):
    """What the server asks of a model; every method may raise LamflowError."""

    def health(self) -> dict[str, Any]:
        """Cheap (LS waits 1 s): {"model_version", ...}; ModelUnavailable if none can serve."""

    def setup(self, label_config: str) -> str:
        """Check the labeling config against the model; returns the model version served."""

    def predict(self, tasks: list[dict[str, Any]], label_config: str) -> dict[str, Any]:
        """{"results": [one item per task, in order], "model_version"}."""

    def webhook(self, event: dict[str, Any]) -> dict[str, Any]:
        """One Label Studio webhook event (or a train call) -> {"status", ...}; must return
        within LS's webhook timeout (1 s): slow work goes to the background."""

    def versions(self) -> list[str]:
        """Model versions this backend can name (the served one last)."""


@dataclass(frozen=True)
class PredictLimits:
    """workers: /predict requests computed at once; queue: more that may wait for a worker."""

    workers: int = 1
    queue: int = 4

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue < 0:
            raise ValueError(
                f"predict limits need workers >= 1 and queue >= 0, got {self.workers}, {self.queue}"
            )


def _error(status: int, message: str) -> JSONResponse:
    log.warning("HTTP %d: %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _authorized(request: Request, basic_auth: tuple[str, str] | None) -> bool:
    if basic_auth is None:
        return True
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # constant time, so the answer's timing gives nothing away
    same_user = hmac.compare_digest(user.encode(), basic_auth[0].encode())
    return hmac.compare_digest(password.encode(), basic_auth[1].encode()) and same_user


Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    model: BackendModel,
    limits: PredictLimits | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> Starlette:
    """The ASGI app serving `model` to Label Studio (run it with uvicorn, or test it with
    starlette's TestClient). `basic_auth`: (user, password) LS must send; None = open."""
    limits = limits or PredictLimits()
    admitted = 0  # /predict requests running or waiting; only the event loop's thread counts
    workers = anyio.CapacityLimiter(limits.workers)

    def guarded(handler: Handler, auth: bool = True) -> Handler:
        async def run(request: Request) -> Response:
            if auth and not _authorized(request, basic_auth):
                return JSONResponse(
                    {"error": "authentication required"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="lamflow"'},
                )
            try:
                return await handler(request)
            except ModelUnavailable as exc:
                return _error(503, str(exc))
            except (LamflowError, ValueError, KeyError, TypeError) as exc:
                return _error(400, str(exc) or type(exc).__name__)

        return run

    async def health(request: Request) -> Response:
        try:
            state = await anyio.to_thread.run_sync(model.health)
        except LamflowError as exc:
            log.warning("health: %s", exc)
            return JSONResponse({"status": "DOWN", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "UP", "model_class": "lamflow", **state})

    async def setup(request: Request) -> Response:
        body = await _json_body(request)
        schema = body.get("schema") or ""
        version = await anyio.to_thread.run_sync(model.setup, schema)
        return JSONResponse({"model_version": version})

    async def validate(request: Request) -> Response:
        body = await _json_body(request)
        version = await anyio.to_thread.run_sync(model.setup, body.get("config") or "")
        return JSONResponse({"model_version": version})

    async def predict(request: Request) -> Response:
        nonlocal admitted
        if admitted >= limits.workers + limits.queue:
            return _error(
                503,
                f"busy: {admitted} predict requests running or queued (at most "
                f"{limits.workers} + {limits.queue}); try again later",
            )
        admitted += 1
        try:
            body = await _json_body(request)
            tasks = body.get("tasks")
            if not isinstance(tasks, list):
                raise ValueError("predict request lacks a 'tasks' list")
            config = str(body.get("label_config") or "")
            answer = await anyio.to_thread.run_sync(model.predict, tasks, config, limiter=workers)
        finally:
            admitted -= 1
        return JSONResponse(answer)

    async def webhook(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(await anyio.to_thread.run_sync(model.webhook, body))

    async def train(request: Request) -> Response:
        body = await _json_body(request)
        event = {"action": "START_TRAINING", "project": body.get("project")}
        return JSONResponse(await anyio.to_thread.run_sync(model.webhook, event))

    async def versions(request: Request) -> Response:
        found = await anyio.to_thread.run_sync(model.versions)
        return JSONResponse({"versions": found, "model_version": found[-1] if found else ""})

    routes = [
        Route("/", guarded(health), methods=["GET"]),
        Route("/health", guarded(health), methods=["GET"]),
        Route("/setup", guarded(setup), methods=["POST"]),
        Route("/validate", guarded(validate), methods=["POST"]),
        Route("/predict", guarded(predict), methods=["POST"]),
        Route("/webhook", guarded(webhook, auth=False), methods=["POST"]),
        Route("/train", guarded(train), methods=["POST"]),
        Route("/versions", guarded(versions), methods=["GET"]),
    ]
    return Starlette(routes=routes)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 9090) -> None:
    """Run `app` with uvicorn until interrupted (one process, one event loop)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
