"""Stage `train`: fit the annotator's head on seed frames and save the model directory."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

from prefect import task
from tqdm import tqdm

from lam.build import LamConfig, build_lam
from lam.errors import LamflowError
from lam.imageio import decode_image, decode_label
from lam.train import TrainSettings, train_head
from lamflow.params import ModelParams, TrainParams
from lamflow.storage import (
    find_by_stem,
    join,
    list_images,
    read_bytes,
    sha256_bytes,
    write_text_atomic,
)
from tasks._frames import load_classes, save_model

log = logging.getLogger(__name__)
TRAIN_REPORT = "train_report.json"


def train(
    images: str,
    labels: str,
    classes: str,
    seeds: list[str],
    out: str,
    model: ModelParams | None = None,
    settings: TrainParams | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from seed frames `seeds` (file stems) found in `images`, labels in `labels`.

    Args:
        images: URL of a folder of frames (STEM.jpg/.png).
        labels: URL of a folder of single-channel PNG class-id maps (STEM.png).
        classes: URL of classes.json.
        seeds: stems of the seed frames (at least one).
        out: URL of the model directory to write.
    Returns:
        the training report (also written to `out/train_report.json`), with `model_version`.
    """
    model = model or ModelParams()
    settings = settings or TrainParams()
    if not seeds:
        raise LamflowError("no seed frames given: pass at least one stem with --seeds")
    class_list = load_classes(classes)
    frames = dict(list_images(images))
    seed_images, seed_labels, provenance = [], [], []
    for stem in seeds:
        if stem not in frames:
            near = ", ".join(sorted(frames)[:5])
            raise LamflowError(f"seed {stem!r} not found in {images} (frames: {near}, ...)")
        label_url = find_by_stem(labels, stem)
        if label_url is None:
            raise LamflowError(f"seed {stem!r} has no label {stem}.png in {labels}")
        image_bytes, label_bytes = read_bytes(frames[stem]), read_bytes(label_url)
        image = decode_image(image_bytes, frames[stem])
        label = decode_label(label_bytes, label_url)
        if label.shape != image.shape[:2]:
            raise LamflowError(
                f"seed {stem!r}: label size {label.shape[1]}x{label.shape[0]} differs from "
                f"frame size {image.shape[1]}x{image.shape[0]}"
            )
        class_list.check_label(label, where=f"label {label_url}")
        seed_images.append(image)
        seed_labels.append(label)
        provenance.append(
            {
                "stem": stem,
                "image_sha256": sha256_bytes(image_bytes),
                "label_sha256": sha256_bytes(label_bytes),
            }
        )

    config = LamConfig(classes=class_list.to_json(), **model.model_dump())
    net = build_lam(config)
    lam_settings = TrainSettings(
        **{**settings.model_dump(exclude={"seeds"}), "scales": tuple(settings.scales)}
    )
    bar = tqdm(total=None, desc="train", unit="stage", disable=not progress, leave=False)

    def _progress(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    started = time.perf_counter()
    report = train_head(
        net, seed_images, seed_labels, class_list.ignore_index, lam_settings, _progress
    )
    bar.close()
    version = save_model(out, net, config)
    summary = {
        "model_version": version,
        "out": out,
        "seeds": provenance,
        "seconds": round(time.perf_counter() - started, 2),
        "views": report.views,
        "final_loss": round(report.final_loss, 4),
        "class_pixels": dict(zip(class_list.names, report.class_pixels)),
        "model": model.model_dump(),
        "train": {k: v for k, v in asdict(lam_settings).items()},
    }
    write_text_atomic(join(out, TRAIN_REPORT), json.dumps(summary, indent=2))
    log.info("trained %s from %d seed(s) in %.1fs", version, len(seeds), summary["seconds"])
    return summary


train_task = task(name="train", retries=0)(train)
