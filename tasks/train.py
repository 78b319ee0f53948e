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
from lam.train import TrainSettings, train_head
from lamflow.params import ModelParams, TrainParams
from lamflow.storage import join, write_text_atomic
from tasks._frames import load_classes, load_seed_frames, save_model

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
    seed_images, seed_labels, provenance = load_seed_frames(images, labels, seeds, class_list)

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
