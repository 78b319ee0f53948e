"""Shared fixtures: CamVid location, tiny models, and one Prefect test harness per session."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("LAMFLOW_CAMVID", REPO.parent / "shared" / "data" / "camvid"))


@pytest.fixture(scope="session")
def camvid() -> Path:
    """Root of the CamVid sample (../shared/data/camvid); tests needing it skip if absent."""
    if not (CAMVID / "classes.json").exists():
        pytest.skip(f"CamVid not found at {CAMVID}")
    return CAMVID


@pytest.fixture(scope="session")
def camvid_classes(camvid: Path) -> dict:
    return json.loads((camvid / "classes.json").read_text())


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def tiny_classes() -> dict:
    return {
        "ignore_index": 255,
        "classes": [
            {"id": 0, "name": "sky", "color": [128, 128, 128]},
            {"id": 1, "name": "road", "color": [128, 64, 128]},
            {"id": 2, "name": "car", "color": [64, 0, 128]},
        ],
    }


def make_scene(seed: int, h: int = 64, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic street-like frame: blue-grey sky on top, dark road below, a red 'car' box.

    Returns ((h, w, 3) uint8 RGB, (h, w) uint8 labels with ids 0 sky, 1 road, 2 car).
    """
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.float32)
    lab = np.zeros((h, w), dtype=np.uint8)
    horizon = h // 2 + int(rng.integers(-4, 5))
    img[:horizon] = (150, 170, 210)
    img[horizon:] = (70, 70, 75)
    lab[horizon:] = 1
    y0 = horizon + 2
    x0 = int(rng.integers(4, w - 30))
    img[y0 : y0 + 14, x0 : x0 + 24] = (200, 30, 30)
    lab[y0 : y0 + 14, x0 : x0 + 24] = 2
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


@pytest.fixture(scope="session")
def tiny_backbone():
    """A randomly initialised EfficientNet-Lite0 (no weight file needed), frozen, eval mode."""
    import timm
    import torch

    from lam.modeling.backbone import EfficientNetBackbone

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    return EfficientNetBackbone(model, tap_blocks=(1, 2, 4, 6), include_head=True).eval()


@pytest.fixture()
def scene_folder(tmp_path: Path, tiny_classes: dict) -> Path:
    """tmp folder with images/ (6 synthetic frames), labels/ and classes.json."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(6):
        img, lab = make_scene(i)
        Image.fromarray(img).save(tmp_path / "images" / f"drive1_{i:04d}.png")
        Image.fromarray(lab).save(tmp_path / "labels" / f"drive1_{i:04d}.png")
    (tmp_path / "classes.json").write_text(json.dumps(tiny_classes))
    return tmp_path


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


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (session fixtures cannot use monkeypatch)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
