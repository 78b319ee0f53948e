"""Stage `train`: fit the annotator's head on seed frames and save the model directory."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from prefect import task
from tqdm import tqdm

from lam.build import LamConfig, build_lam
from lam.errors import LamflowError
from lam.imageio import decode_label
from lam.train import TrainSettings, train_head
from lamflow.params import ModelParams, TrainParams
from lamflow.storage import find_by_stem, join, read_bytes, sha256_bytes, write_text_atomic
from tasks._frames import load_classes, load_seed_frames, save_model

log = logging.getLogger(__name__)
TRAIN_REPORT = "train_report.json"


def load_confidence(
    url: str, provenance: list[dict[str, Any]], labels: list[np.ndarray]
) -> list[np.ndarray | None]:
    """Per seed its (H, W) float32 confidence in [0, 1] from `url`/STEM.png, or None.

    Adds `confidence_sha256` to the seed's provenance, so the train report (and the model
    key of the nightly flow) changes when a confidence map does.
    """
    out: list[np.ndarray | None] = []
    for record, label in zip(provenance, labels):
        found = find_by_stem(url, str(record["stem"]))
        if found is None:
            out.append(None)
            continue
        data = read_bytes(found)
        conf = decode_label(data, found)
        if conf.shape != label.shape:
            raise LamflowError(
                f"seed {record['stem']!r}: confidence {found} is {conf.shape[0]}x{conf.shape[1]}, "
                f"its label {label.shape[0]}x{label.shape[1]} (height x width)"
            )
        record["confidence_sha256"] = sha256_bytes(data)
        out.append(conf.astype(np.float32) / 255.0)
    return out


def train(
    images: str,
    labels: str,
    classes: str,
    seeds: list[str],
    out: str,
    model: ModelParams | None = None,
    settings: TrainParams | None = None,
    progress: bool = True,
    confidence: str | None = None,
) -> dict[str, Any]:
    """Train from seed frames `seeds` (file stems) found in `images`, labels in `labels`.

    Args:
        images: URL of a folder of frames (STEM.jpg/.png).
        labels: URL of a folder of single-channel PNG class-id maps (STEM.png).
        classes: URL of classes.json.
        seeds: stems of the seed frames (at least one).
        out: URL of the model directory to write.
        confidence: optional URL of a folder of per-pixel confidence PNGs (STEM.png, uint8,
            255 = sure), as `zero_shot_seeds` writes: a seed with one has each labelled
            pixel weighted by it in the loss; a seed without one (a human's) counts fully.
    Returns:
        the training report (also written to `out/train_report.json`), with `model_version`.
    """
    model = model or ModelParams()
    settings = settings or TrainParams()
    if not seeds:
        raise LamflowError("no seed frames given: pass at least one stem with --seeds")
    class_list = load_classes(classes)
    seed_images, seed_labels, provenance = load_seed_frames(images, labels, seeds, class_list)
    weights = load_confidence(confidence, provenance, seed_labels) if confidence else None

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
        net, seed_images, seed_labels, class_list.ignore_index, lam_settings, _progress, weights
    )
    bar.close()
    version = save_model(out, net, config)
    # A class no seed pixel shows gets no training signal, so the model never predicts it
    # (CamVid: a single frame often lacks 3-5 of the 11 classes, each then scoring 0 IoU).
    unseen = [name for name, n in zip(class_list.names, report.class_pixels) if n == 0]
    if unseen:
        log.warning(
            "%d of %d classes have no seed pixel and will never be predicted: %s "
            "(add a seed frame that shows them; select-seeds --labels adds such frames)",
            len(unseen),
            len(class_list.names),
            ", ".join(unseen),
        )
    summary = {
        "model_version": version,
        "out": out,
        "seeds": provenance,
        "seconds": round(time.perf_counter() - started, 2),
        "views": report.views,
        "final_loss": round(report.final_loss, 4),
        "class_pixels": dict(zip(class_list.names, report.class_pixels)),
        "unseen_classes": unseen,
        "model": model.model_dump(),
        "train": {k: v for k, v in asdict(lam_settings).items()},
    }
    write_text_atomic(join(out, TRAIN_REPORT), json.dumps(summary, indent=2))
    log.info("trained %s from %d seed(s) in %.1fs", version, len(seeds), summary["seconds"])
    return summary


train_task = task(name="train", retries=0)(train)
