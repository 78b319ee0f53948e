"""Fixtures of the pipeline tests: a tiny trained model, synthetic drops, a real SeaweedFS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lamflow.params import load_params
from tests.pipeline.helpers import write_params, write_seed_set


@pytest.fixture(scope="session")
def seed_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_seed_set(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, seed_set: Path) -> dict[str, Any]:
    """A model trained for a few iterations on two synthetic seed frames (model store layout)."""
    from tasks.models import ensure_model

    root = tmp_path_factory.mktemp("modelroot")
    params = load_params(write_params(root / "params.yaml", str(root), seed_set))
    return ensure_model(str(root), params, progress=False)
