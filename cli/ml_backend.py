"""`lamflow ml-backend`: lamflow as a Label Studio ML backend (docs/ml_backend.md)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from lam.errors import LamflowError
from lamflow.params import load_params

from .stages import common_options

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ml-backend",
        help="serve a model to Label Studio (predictions, and annotations back as seeds)",
        description="Serve lamflow to Label Studio 1.23 as an ML backend. LABEL_STUDIO_URL and "
        "LABEL_STUDIO_API_KEY let it read the frames Label Studio serves and the annotations "
        "its webhook announces; BASIC_AUTH_USER / BASIC_AUTH_PASS require those credentials "
        "(Label Studio's 'Basic Auth' option).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--root", help="the fleet's ROOT: serve the model its nightly run published")
    which.add_argument("--model", help="serve this model directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument(
        "--train-on-submit",
        action="store_true",
        help="with --root: retrain in the background as soon as an annotation becomes a seed",
    )
    p.add_argument("--workers", type=int, default=1, help="predict requests computed at once")
    p.add_argument("--queue", type=int, default=4, help="predict requests that may wait")
    common_options(p)
    p.set_defaults(func=_ml_backend)


def build_backend(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the ASGI app, its LamflowBackend) that `args` describe, the model already loaded: a
    model that does not load raises here, before the server listens."""
    from lamflow.labelstudio_api import LabelStudioClient
    from lamflow.ml_backend import PredictLimits, create_app
    from tasks.ml_backend import LamflowBackend
    from tasks.ml_models import ModelFollower

    params = load_params(args.params, args.set)
    if args.train_on_submit and not args.root:
        raise LamflowError("--train-on-submit needs --root (the seed set it trains on)")
    if args.workers < 1 or args.queue < 0:
        raise LamflowError(
            f"--workers must be >= 1 and --queue >= 0, got {args.workers}, {args.queue}"
        )
    models = ModelFollower(
        model_dir=args.model,
        root=args.root,
        device=params.annotate.device,
        batch_size=params.annotate.batch_size,
    )
    served = models.current()
    client = None
    if os.environ.get("LABEL_STUDIO_URL") and os.environ.get("LABEL_STUDIO_API_KEY"):
        client = LabelStudioClient.from_env()
    else:
        log.warning(
            "LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY not set: frames Label Studio serves "
            "(/data/...) cannot be read, and annotations are not pulled"
        )
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    backend = LamflowBackend(models, params, client, args.root, args.train_on_submit)
    app = create_app(
        backend,
        PredictLimits(args.workers, args.queue),
        (user, password) if user and password else None,
    )
    log.info("model %s from %s", served.version, served.url)
    return app, backend


def _ml_backend(args: argparse.Namespace) -> int:
    from lamflow.ml_backend import serve

    app, _ = build_backend(args)
    log.info("Label Studio ML backend on http://%s:%d", args.host, args.port)
    serve(app, args.host, args.port)
    return 0
