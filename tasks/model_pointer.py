"""ROOT's model pointer, `ROOT/state/model.json`: the model the fleet labels with.

The nightly flow publishes the model it labels with here (flows/state.py); the ML backend
(`lamflow ml-backend --root`) serves whatever it names. Kept apart from tasks/models.py so
that reading it imports no torch.
"""

from __future__ import annotations

import json
from typing import Any

from lam.errors import LamflowError
from lamflow.storage import get_fs, join, write_text_atomic
from lamflow.timestamps import utc_now


def model_pointer_url(root: str) -> str:
    """ROOT/state/model.json."""
    return join(root, "state", "model.json")


def published_model(root: str) -> dict[str, Any]:
    """ROOT's model pointer: {"model_version", "model" (its directory's URL), "seeds",
    "trained", "seed_key" (what it learned from: tasks.models.ensure_model), "since"}; {}
    before the first run. One GET, no cached listing (a server that
    follows the fleet reads it on every request)."""
    url = model_pointer_url(root)
    fs, path = get_fs(url)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return {}
    try:
        return dict(json.loads(raw))
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise LamflowError(f"{url} is not a model pointer: {exc}") from exc


def publish_model(root: str, model: dict[str, Any]) -> None:
    """Point ROOT's model pointer at `model` (an `ensure_model` result: its version, its
    directory and seed count)."""
    keys = ("model_version", "model", "seeds", "trained", "seed_key")
    data = {"since": utc_now(), **{k: model.get(k) for k in keys}}
    write_text_atomic(model_pointer_url(root), json.dumps(data))
