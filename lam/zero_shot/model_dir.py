"""Local transformers model directories (no hub, ever): the check every backend that reads one
uses (vocabulary taggers, zero-shot seeds), and reading embeddings from their outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from lam.errors import LamflowError


def check_model_dir(model_dir: str | Path, what: str, model_types: Sequence[str] = ()) -> Path:
    """`model_dir` as a Path holding a transformers model of one of `model_types` (any if
    empty).

    Raises LamflowError in one line for an unset or missing directory, one without a
    config.json, or one whose config names another model type.
    """
    if not model_dir:
        raise LamflowError(f"{what} needs a local model directory; none is set")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise LamflowError(f"{what}: model directory {path} does not exist")
    config = path / "config.json"
    if not config.is_file():
        raise LamflowError(
            f"{what}: {path} is not a transformers model directory (no config.json); "
            "write one with model.save_pretrained(dir) and processor.save_pretrained(dir)"
        )
    try:
        model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (OSError, ValueError) as exc:
        raise LamflowError(f"{what}: cannot read {config}: {exc}") from exc
    if model_types and model_type not in model_types:
        raise LamflowError(
            f"{what}: {path} holds a {model_type or 'untyped'!r} model; "
            f"expected model_type {' or '.join(repr(t) for t in model_types)}"
        )
    return path


def projected_embeddings(output: object) -> torch.Tensor:
    """Projected embeddings from `get_*_features` (a tensor, or an output whose pooler is it:
    transformers 5 returns an output object there)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise LamflowError(f"cannot read embeddings from {type(output).__name__}")
    return pooled
