"""Fixtures of the pipeline tests: a tiny trained model, synthetic drops, a real SeaweedFS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamflow.params import load_params
from tests.pipeline.helpers import environment, write_params, write_seed_set


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


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real SeaweedFS S3 server on free loopback ports, with bucket `lamflow-test`.

    The environment points lamflow (s3fs) and boto at it for the whole session.
    """
    from lamflow.s3server import Credentials, SeaweedServer

    server = SeaweedServer.with_free_ports(
        tmp_path_factory.mktemp("seaweed"), Credentials("lamflowtest", "test-secret-not-real")
    )
    server.start(timeout=120)
    try:
        with environment(server.env()):
            server.make_bucket("lamflow-test")
            yield server
    finally:
        server.stop()
