"""Builders shared by the pipeline and flow tests: synthetic drops, a tiny model, a SeaweedFS."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fsspec
import yaml
from PIL import Image

from tests.conftest import make_scene

TINY_CLASSES = {
    "ignore_index": 255,
    "classes": [
        {"id": 0, "name": "sky", "color": [128, 128, 128]},
        {"id": 1, "name": "road", "color": [128, 64, 128]},
        {"id": 2, "name": "car", "color": [64, 0, 128]},
    ],
}


def png_bytes(seed: int) -> bytes:
    img, _ = make_scene(seed)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_seed_set(folder: Path, n: int = 3) -> Path:
    """folder/images, folder/labels (synthetic scenes) and folder/classes.json."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, lab = make_scene(100 + i)
        Image.fromarray(img).save(folder / "images" / f"seed_{i:02d}.png")
        Image.fromarray(lab).save(folder / "labels" / f"seed_{i:02d}.png")
    (folder / "classes.json").write_text(json.dumps(TINY_CLASSES))
    return folder


def write_drop(root: str, drive: str, n: int, bad: bool = False, start: int = 0) -> list[str]:
    """ROOT/drops/DRIVE/images with `n` synthetic frames (+ empty, truncated, corrupt if `bad`).

    Works for any fsspec URL (local path, s3://, memory://). Returns the stems written.
    """
    fs, base = fsspec.core.url_to_fs(f"{root}/drops/{drive}/images", **_s3_opts(root))
    fs.makedirs(base, exist_ok=True)
    stems = []
    for i in range(start, start + n):
        stem = f"{drive}_{i:04d}"
        fs.pipe_file(f"{base}/{stem}.png", png_bytes(i))
        stems.append(stem)
    if bad:
        good = png_bytes(999)
        fs.pipe_file(f"{base}/{drive}_bad_empty.png", b"")
        fs.pipe_file(f"{base}/{drive}_bad_truncated.png", good[: len(good) // 3])
        fs.pipe_file(f"{base}/{drive}_bad_corrupt.png", b"\x89PNG\r\n\x1a\nnot really a png")
        stems += [f"{drive}_bad_empty", f"{drive}_bad_truncated", f"{drive}_bad_corrupt"]
    return stems


def _s3_opts(url: str) -> dict:
    from lamflow.storage import s3_options

    return s3_options() if url.startswith("s3://") else {}


def write_params(path: Path, root: str, seeds: Path, **sections: dict) -> Path:
    """A params.yaml for the synthetic world: 1 seed, few iterations, small shards."""
    data = {
        "data": {"root": root, "classes": str(seeds / "classes.json")},
        "train": {"seeds": ["seed_00", "seed_01"], "iterations": 8, "batch_views": 2},
        "annotate": {"shard_size": 3, "batch_size": 2},
        "pipeline": {
            "seed_images": str(seeds / "images"),
            "seed_labels": str(seeds / "labels"),
            "dask_workers": 1,
            "overlays_per_drop": 1,
            # the tagger and the DVC workspace cost seconds a run: tests that check them say so
            "vocabulary_per_drop": False,
        },
        "versioning": {"enabled": False},
        # random heads on synthetic scenes are not confident: QC must not fail the run on it
        "qc": {"min_mean_confidence": 0.0, "max_low_confidence_fraction": 1.0, "max_drift": 1.0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path
