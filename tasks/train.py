"""Stage `train`: fit the annotator's head on seed frames and save the model directory."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm import tqdm

from lam.build import build_lam
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_label
from lam.modeling.class_map import ClassMapAdapter
from lam.train import TrainSettings, train_head
from lamflow.params import ModelParams, TrainParams
from lamflow.storage import find_by_stem, join, read_bytes, sha256_bytes, write_text_atomic
from tasks.frame_sources import load_classes, load_seed_frames, load_unlabeled_frames
from tasks.model_io import save_model
from tasks.seed_set import list_seeds
from tasks.source_model import (
    SOURCE_NETWORK_BACKBONES,
    build_config,
    weights_provenance,
)

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
    images: str | list[str],
    labels: str | list[str],
    classes: str,
    seeds: list[str],
    out: str,
    model: ModelParams | None = None,
    settings: TrainParams | None = None,
    progress: bool = True,
    confidence: str | None = None,
    unlabeled: list[str] | None = None,
    seed_set: str = "",
    no_seeds: bool = False,
    vocabulary: str | None = None,
) -> dict[str, Any]:
    """Train from seed frames `seeds` (file stems) found in `images`, labels in `labels`.

    Args:
        images: URL of a folder of frames (STEM.jpg/.png), or several: a stem is taken from
            the first folder holding it.
        labels: URL of a folder of single-channel PNG class-id maps (STEM.png), or one per
            image folder, in the same order.
        classes: URL of classes.json.
        seeds: stems of the seed frames (may be empty when `seed_set` holds seeds).
        out: URL of the model directory to write.
        confidence: optional URL of a folder of per-pixel confidence PNGs (STEM.png, uint8,
            255 = sure), as `zero_shot_seeds` writes: a seed with one has each labelled
            pixel weighted by it in the loss; a seed without one (a human's) counts fully.
        unlabeled: URLs of folders of frames whose labels are never read (the new drop,
            earlier drops). `train.unlabeled_method` says what they are for: none (the
            library's default, and EfficientNet-Lite0's) does not read them; norm_stats
            (params.yaml's, chosen on the cross-drive folds for the source network) reads
            `train.unlabeled_frames` of them, evenly spaced, and blends the backbone's
            BatchNorm statistics towards theirs (lam.norm_stats); self_train reads as many
            and self-trains the head on them (lam.train.train_head).
        seed_set: URL of a seed set (tasks.seed_set: images/, labels/, confidence/,
            provenance/): all its seeds are used, with their confidence maps; a stem of
            `seeds` that the set also holds is taken from the set.
        no_seeds: build the model from no labelled frame at all: a source-network backbone
            (espnetv2_city, ...) with its classes mapped onto `classes` by name or by
            `vocabulary` (`seeds` and `seed_set` must then be empty: the CLI then drops the
            params' seed list, and seeds given with it are an error, not ignored). Zero seeds
            must be said: `seeds` defaults to train.seeds.
        vocabulary: URL of a vocabulary.yaml whose `source_mapping` rows map the source
            network's classes onto `classes` (a person's corrections there win); without it
            the map is proposed from the class names. Only for source-network backbones.
    Returns:
        the training report (also written to `out/train_report.json`), with `model_version`.
    """
    started = time.perf_counter()  # the report's seconds: reads and decoding included
    model = model or ModelParams()
    settings = settings or TrainParams()
    class_list = load_classes(classes)
    seed_images: list[np.ndarray] = []
    seed_labels: list[np.ndarray] = []
    provenance: list[dict[str, Any]] = []
    weights: list[np.ndarray | None] = []
    if no_seeds:
        if seed_set:
            raise LamflowError(f"--no-seeds and a seed set ({seed_set}) exclude each other")
        if seeds:
            shown = ", ".join(seeds[:3]) + (", ..." if len(seeds) > 3 else "")
            raise LamflowError(f"--no-seeds and {len(seeds)} seed(s) ({shown}) exclude each other")
    else:
        seed_images, seed_labels, provenance, weights = _load_seeds(
            images, labels, seeds, class_list, confidence, seed_set
        )
    unlabeled_frames: list[np.ndarray] = []
    unlabeled_records: list[dict[str, str]] = []
    undecodable: list[str] = []
    if unlabeled and settings.unlabeled_method == "none":
        log.info(
            "train.unlabeled_method is none: the %d unlabeled folder(s) are not read",
            len(unlabeled),
        )
    elif unlabeled:
        unlabeled_frames, unlabeled_records, undecodable = load_unlabeled_frames(
            list(unlabeled),
            settings.unlabeled_frames,
            exclude={str(p["stem"]) for p in provenance},
            progress=progress,
        )

    config, backbone, mapping = build_config(model, class_list, vocabulary)
    if no_seeds and mapping is None:
        raise LamflowError(
            f"--no-seeds needs a source-network backbone ({', '.join(SOURCE_NETWORK_BACKBONES)}), "
            f"not model.backbone {model.backbone!r}: a frozen ImageNet backbone knows no class"
        )
    net = build_lam(config, backbone=backbone, seed=settings.seed)
    lam_settings = TrainSettings(
        **{
            **settings.model_dump(exclude={"seeds", "unlabeled_frames"}),
            "scales": tuple(settings.scales),
        }
    )
    bar = tqdm(total=None, desc="train", unit="stage", disable=not progress, leave=False)

    def _progress(step: int, total: int, loss: float) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    report = train_head(  # no seeds: only the unlabeled frames' norm statistics, if asked
        net,
        seed_images,
        seed_labels,
        class_list.ignore_index,
        lam_settings,
        _progress,
        weights,
        unlabeled=unlabeled_frames,
    )
    bar.close()
    if mapping is not None and isinstance(net.adapter, ClassMapAdapter):
        mapping.record_fitted(net.adapter)
        # in config.json too, so the model directory says what it stands on and its terms
        terms = {k: v for k, v in weights_provenance(backbone).items() if k != "path"}
        config.extra = {**config.extra, "class_map": mapping.as_dict(), "weights": terms}
        log.info("class map in use (%s):\n%s", mapping.origin, mapping.table())
    version = save_model(out, net, config)
    # A class no seed pixel shows gets no training signal, so the model never predicts it
    # (CamVid: a single frame often lacks 3-5 of the 11 classes, each then scoring 0 IoU).
    unseen = [name for name, n in zip(class_list.names, report.class_pixels) if n == 0]
    if mapping is not None:  # a mapped class is predicted without seed pixels
        unseen = [name for name in unseen if name not in mapping.mapped_targets()]
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
        "unlabeled": {
            "folders": list(unlabeled or []),
            "method": settings.unlabeled_method,
            "frames": unlabeled_records,
            "undecodable": undecodable,
        },
        "seconds": round(time.perf_counter() - started, 2),
        "views": report.views,
        "final_loss": round(report.final_loss, 4) if np.isfinite(report.final_loss) else None,
        "class_pixels": dict(zip(class_list.names, report.class_pixels)),
        "unseen_classes": unseen,
        "model": model.model_dump(),
        "train": {k: v for k, v in asdict(lam_settings).items()},
    }
    if mapping is not None:
        summary["class_map"] = mapping.as_dict()
        summary["weights"] = weights_provenance(backbone)
    write_text_atomic(join(out, TRAIN_REPORT), json.dumps(summary, indent=2))
    log.info(
        "trained %s from %d seed(s) and %d unlabeled frame(s) in %.1fs",
        version,
        len(provenance),
        len(unlabeled_records),
        summary["seconds"],
    )
    return summary


def _load_seeds(
    images: str | list[str],
    labels: str | list[str],
    seeds: list[str],
    class_list: ClassList,
    confidence: str | None,
    seed_set: str,
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]], list[np.ndarray | None]]:
    """Seed frames, labels, provenance and per-pixel weights from the folders and the set."""
    from_set: list[str] = []
    if seed_set:
        from_set = [str(p["stem"]) for p in list_seeds(seed_set)]
        if not from_set:
            raise LamflowError(f"seed set {seed_set} holds no seed (no provenance/*.json)")
    stems = [s for s in seeds if s not in set(from_set)]
    if not stems and not from_set:
        raise LamflowError("no seed frames given: pass stems with --seeds, or --seed-set")
    out_images: list[np.ndarray] = []
    out_labels: list[np.ndarray] = []
    provenance: list[dict[str, Any]] = []
    weights: list[np.ndarray | None] = []
    parts: list[tuple[str | list[str], str | list[str], list[str], str | None]] = []
    if from_set:
        parts.append(
            (
                join(seed_set, "images"),
                join(seed_set, "labels"),
                from_set,
                join(seed_set, "confidence"),
            )
        )
    if stems:
        parts.append((images, labels, stems, confidence))
    for part_images, part_labels, part_stems, part_conf in parts:
        ims, lbs, prov = load_seed_frames(part_images, part_labels, part_stems, class_list)
        conf = load_confidence(part_conf, prov, lbs) if part_conf else [None] * len(ims)
        out_images += ims
        out_labels += lbs
        provenance += prov
        weights += conf
    return out_images, out_labels, provenance, weights
