"""Time one `/predict` request of N tasks to `lamflow ml-backend`, as Label Studio sends it.

The backend runs in this process under uvicorn on a loopback port (the app `lamflow
ml-backend --model` builds); the frames are served over loopback HTTP as `http://` task URLs
(through lamflow.storage), or, with LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY set and
`--label-studio PROJECT`, uploaded to that Label Studio and read back through its
`/data/upload/` URLs. Prints JSON: seconds per request (first and repeats), tasks/s.

    python bench/ml_backend.py --model MODEL_DIR --images ../shared/data/camvid/val/images
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lam.formats.labelstudio import labeling_config  # noqa: E402
from lamflow.labelstudio_api import LabelStudioClient  # noqa: E402
from lamflow.ml_backend import create_app  # noqa: E402
from lamflow.params import load_params  # noqa: E402
from tasks.ml_backend import LamflowBackend  # noqa: E402
from tasks.ml_models import ModelFollower  # noqa: E402


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--label-studio", type=int, default=0, metavar="PROJECT")
    args = parser.parse_args()
    import uvicorn

    params = load_params()
    names = sorted(p.name for p in Path(args.images).iterdir() if p.suffix in (".jpg", ".png"))
    names = names[: args.tasks]
    client = LabelStudioClient.from_env() if args.label_studio else None
    if client is not None:
        urls = [
            client.upload_image(args.label_studio, n, (Path(args.images) / n).read_bytes())
            for n in names
        ]
    else:
        files = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=args.images)
        )
        threading.Thread(target=files.serve_forever, daemon=True).start()
        urls = [f"http://127.0.0.1:{files.server_address[1]}/{n}" for n in names]
    models = ModelFollower(model_dir=args.model, batch_size=params.annotate.batch_size)
    served = models.current()
    backend = LamflowBackend(models, params, client)
    port = _port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    body = {
        "tasks": [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)],
        "project": "1.1",
        "label_config": labeling_config(served.config.class_list),
        "params": {},
    }
    seconds = []
    for _ in range(1 + args.repeats):
        t0 = time.perf_counter()
        resp = requests.post(f"http://127.0.0.1:{port}/predict", json=body, timeout=600)
        seconds.append(round(time.perf_counter() - t0, 2))
        resp.raise_for_status()
        results = resp.json()["results"]
        if any("result" not in r for r in results):
            raise SystemExit(f"failed tasks: {[r for r in results if 'result' not in r][:2]}")
    server.should_exit = True
    print(
        json.dumps(
            {
                "tasks": len(names),
                "frames": "label studio /data/upload" if client else "http (loopback)",
                "model_version": served.version,
                "backbone": served.config.backbone,
                "cores": len(os.sched_getaffinity(0)),
                "seconds_first": seconds[0],
                "seconds_repeats": seconds[1:],
                "tasks_per_second_best": round(len(names) / min(seconds), 2),
                "answer_mb": round(len(resp.content) / 1e6, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
