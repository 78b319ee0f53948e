"""The model store: one model directory per seed set, `ROOT/models/SEED_KEY/`.

The model learns from the fleet's seed set ROOT/seeds (tasks/seed_set.py), bootstrapped from
`train.seeds` of the archive and grown by the review loop. SEED_KEY hashes everything a trained
model depends on (seed stems and the bytes of their frames and labels, the class list, the
model and train params), so "is there a model for the current seeds?" is a single existence
check, and a new reviewed seed trains a new model next night.
"""

from __future__ import annotations

import json
from typing import Any

from lam.artifact import CONFIG_FILE
from lam.build import SOURCE_NETWORKS
from lamflow.params import Params
from lamflow.storage import exists, join, read_bytes, sha256_bytes
from tasks.frame_sources import load_classes, pick_unlabeled
from tasks.seed_bootstrap import bootstrap_from_zero_shot, bootstrap_seed_set
from tasks.seed_set import BOOTSTRAP_MARKER, seed_set_fingerprint, seed_set_url
from tasks.source_model import mapping_vocabulary_key, mapping_wordnet_key, model_key_fields
from tasks.train import train
from tasks.zero_shot_seeds import zero_shot_seeds


def seed_sources(params: Params) -> dict[str, str]:
    """URLs of the seed frames, seed labels and classes.json (defaults: the CamVid train split)."""
    camvid = params.data.camvid
    return {
        "images": params.pipeline.seed_images or join(camvid, "train", "images"),
        "labels": params.pipeline.seed_labels or join(camvid, "train", "labels"),
        "classes": params.data.classes or join(camvid, "classes.json"),
    }


def ensure_seed_set(root: str, params: Params, progress: bool = False) -> str:
    """URL of the fleet's seed set ROOT/seeds, bootstrapped when empty.

    pipeline.seed_source "labels": from `train.seeds` of the seed images and their labels;
    "zero_shot": from `zero_shot_seeds` run on those frames (all of them if `train.seeds` is
    empty), its output kept under ROOT/zero_shot_seeds; no human label is read.
    """
    src = seed_sources(params)
    url = seed_set_url(root)
    classes = load_classes(src["classes"])
    if params.pipeline.seed_source == "zero_shot":
        if not exists(join(url, BOOTSTRAP_MARKER)):
            out = join(root, "zero_shot_seeds")
            zero_shot_seeds(
                src["images"],
                src["classes"],
                out,
                params.zero_shot_seeds,
                params.vocabulary,
                stems=list(params.train.seeds) or None,
                progress=progress,
                model=params.model,
            )
            bootstrap_from_zero_shot(url, src["images"], out, classes)
        return url
    bootstrap_seed_set(url, src["images"], src["labels"], list(params.train.seeds), classes)
    return url


def seed_key(
    fingerprint: list[list[str]], params: Params, unlabeled: list[list[str]] | None = None
) -> str:
    """16 hex digits identifying the model a seed set (its `seed_set_fingerprint`) and params
    would train.

    Hashes the seed set's files (stems, frame and label bytes), the class list and the model
    and train params; `train.seeds` itself is left out, since once the set exists the set, not
    that list, says what the model learns from.
    """
    return _key_of(_seed_key_parts(fingerprint, params), unlabeled)


def _key_of(parts: list[Any], unlabeled: list[list[str]] | None = None) -> str:
    """`seed_key` of its parts (read once by a caller that needs the key with and without
    the unlabeled frames) and the unlabeled frames' [stem, sha256] (`_unlabeled_key`)."""
    return sha256_bytes(
        json.dumps(parts + ([unlabeled] if unlabeled else []), sort_keys=True).encode()
    )[:16]


def _seed_key_parts(fingerprint: list[list[str]], params: Params) -> list[Any]:
    """What `seed_key` hashes besides the unlabeled frames; reads the class list, the
    vocabulary and WordNet (when they enter)."""
    src = seed_sources(params)
    parts: list[Any] = [sha256_bytes(read_bytes(src["classes"]))]
    parts.append(fingerprint)
    parts.append(model_key_fields(params.model))
    vocabulary = mapping_vocabulary_key(params.model)
    if vocabulary:  # the class map's rows, a person's corrections included
        parts.append({"vocabulary_sha256": vocabulary})
    wordnet = mapping_wordnet_key(params.model)
    if wordnet:  # rows proposed from names use WordNet where it is installed
        parts.append({"wordnet_sha256": wordnet})
    train = params.train.model_dump(mode="json", exclude={"seeds"})
    if params.train.unlabeled_method == "none":  # then they change nothing: keep keys stable
        train.pop("unlabeled_frames")
    if params.train.unlabeled_method != "norm_stats":  # read by norm_stats only
        train.pop("norm_blend")
    if params.model.backbone not in SOURCE_NETWORKS:  # only a class map head has those biases
        train.pop("class_map_bias_decay")
    parts.append(train)
    return parts


def _unlabeled_key(unlabeled: list[str], params: Params, seeds: set[str]) -> list[list[str]]:
    """What a model learns from its unlabeled folders: [stem, sha256] of the frames `train`
    will pick from them (`pick_unlabeled`, the same rule), hashed from their bytes.

    Empty when `train.unlabeled_method` is none: then they are not read, and the model, its
    key and the relabels it causes stay the same whatever drops arrive.
    """
    if params.train.unlabeled_method == "none" or not unlabeled:
        return []
    picked = pick_unlabeled(unlabeled, params.train.unlabeled_frames, exclude=seeds)
    return [[stem, sha256_bytes(read_bytes(url))] for stem, url in picked]


def ensure_model(
    root: str,
    params: Params,
    progress: bool = True,
    unlabeled: list[str] | None = None,
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Model for the current seed set under `root`, trained first if missing.

    The seed set ROOT/seeds is bootstrapped from `train.seeds` on first use, and grows with
    the review loop's seeds; a changed set trains a new, content-addressed model.
    `current`: the model in use (ROOT's model pointer). With no unlabeled folder it is kept
    when it learned from the same seeds and params (`seed_key`), though it was adapted to
    earlier drops: a night with nothing new to label trains nothing.
    Returns {"model": URL of the model directory, "model_version", "seed_key" (its key without
    the unlabeled frames), "trained": bool,
    "seeds": number of seeds, "train_seconds", "class_pixels": seed class-pixel counts (the
    reference histogram for QC drift)}.
    """
    src = seed_sources(params)
    seeds = ensure_seed_set(root, params, progress)
    fingerprint = seed_set_fingerprint(seeds)
    unlabeled = list(unlabeled or [])
    parts = _seed_key_parts(fingerprint, params)  # the class list and vocabulary read once
    learned_from = _key_of(parts)
    drops = _unlabeled_key(unlabeled, params, {stem for stem, _, _ in fingerprint})
    url = join(root, "models", _key_of(parts, drops) if drops else learned_from)
    in_use = str((current or {}).get("model") or "")
    if (
        not unlabeled
        and in_use
        and (current or {}).get("seed_key") == learned_from
        and exists(join(in_use, CONFIG_FILE))
    ):
        url = in_use  # adapted to earlier drops, and learned from these very seeds
    trained = False
    stems = [stem for stem, _, _ in fingerprint]
    if not exists(join(url, CONFIG_FILE)):
        train(
            join(seeds, "images"),
            join(seeds, "labels"),
            src["classes"],
            stems,
            url,
            params.model,
            params.train,
            progress=progress,
            confidence=join(seeds, "confidence"),
            unlabeled=unlabeled if drops else None,
        )
        trained = True
    config = json.loads(read_bytes(join(url, CONFIG_FILE)))
    report_url = join(url, "train_report.json")
    report = json.loads(read_bytes(report_url)) if exists(report_url) else {}
    return {
        "model": url,
        "model_version": str(config.get("version", "")),
        # what the model learned from people and params, the night's unlabeled drops left out:
        # the nightly flow relabels older drops only when this changes (flows.nightly)
        "seed_key": learned_from,
        "trained": trained,
        "seeds": len(stems),
        "seed_set": seeds,
        "train_seconds": float(report.get("seconds", 0.0)) if trained else 0.0,
        "class_pixels": report.get("class_pixels", {}),
        # source-network models: the class map in use and the weights' provenance and licence
        "class_map": report.get("class_map"),
        "weights": report.get("weights"),
    }
