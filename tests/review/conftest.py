"""Fixtures of the review tests: one real Label Studio server per session, and a client for it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lam.errors import LamflowError
from lamflow.labelstudio import LabelStudioServer, label_studio_binary
from lamflow.labelstudio_api import LabelStudioClient


@pytest.fixture(scope="session")
def label_studio_exe() -> str:
    """The `label-studio` executable; if absent, fail in CI (`make test` installs it), else skip."""
    try:
        return label_studio_binary()
    except LamflowError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Label Studio: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def labelstudio(
    label_studio_exe: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioServer]:
    """A real Label Studio on a free loopback port with a fresh SQLite database (~25-45 s)."""
    server = LabelStudioServer.with_free_port(tmp_path_factory.mktemp("labelstudio"))
    server.start(timeout=240)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def ls_client(labelstudio: LabelStudioServer) -> LabelStudioClient:
    return LabelStudioClient(labelstudio.url, labelstudio.creds.token, timeout=30)
