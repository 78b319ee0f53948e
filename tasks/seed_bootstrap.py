"""How a seed set starts (the format is tasks/seed_set.py's): the first human seeds copied
from an archive (`bootstrap_seed_set`, the nightly flow's first run), the frames the zero-shot
stage labeled (`bootstrap_from_zero_shot`, `pipeline.seed_source: zero_shot`), or an import
with no time and no path in it (`import_seeds`: `make data` rebuilds the DVC pipeline's
`data/seeds` to the hash `data/seeds.dvc` records).

Each runs once: `bootstrap.json`, written after the last seed, marks a set that is done, and
from then on the set, not params, is the truth.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_label
from lamflow.storage import exists, find_by_stem, join, list_images, read_bytes, write_text_atomic
from lamflow.timestamps import utc_now
from tasks.frame_sources import load_classes
from tasks.seed_set import BOOTSTRAP_MARKER, add_seed, checked_record, list_seeds, write_seed

log = logging.getLogger(__name__)


def _copy_in(
    seeds: str,
    frame_url: str,
    stem: str,
    label: np.ndarray,
    classes: ClassList,
    provenance: dict[str, Any],
    confidence: np.ndarray | None = None,
) -> dict[str, Any]:
    """`add_seed` for a frame read from `frame_url` (its drive is the stem's prefix)."""
    return add_seed(
        seeds,
        stem,
        read_bytes(frame_url),
        frame_url.rsplit(".", 1)[-1],
        label,
        classes,
        {**provenance, "drive": stem.split("_", 1)[0], "from": frame_url},
        confidence=confidence,
    )


def bootstrap_seed_set(
    seeds: str, images: str, labels: str, stems: list[str], classes: ClassList
) -> list[dict[str, Any]]:
    """Copy the first human seeds (`stems` of `images`/`labels`) into an empty seed set.

    Done once: `bootstrap.json`, written after the last seed, marks a finished bootstrap, and
    from then on the set, not params, is the truth (a later edit of `train.seeds` does not
    silently drop reviewed seeds). A bootstrap a crash cut short is completed by the next call
    (seeds already present are not copied again). Returns the seed set's provenance list.
    """
    marker = join(seeds, BOOTSTRAP_MARKER)
    if exists(marker):
        return list_seeds(seeds)
    if not stems:
        raise LamflowError(
            "the seed set is empty and train.seeds lists no stem: give the first seed frames"
        )
    present = {str(p["stem"]) for p in list_seeds(seeds)}
    frames = dict(list_images(images))
    for stem in stems:
        if stem in present:
            continue
        if stem not in frames:
            raise LamflowError(f"train.seeds: {stem!r} not found in {images}")
        label_url = find_by_stem(labels, stem)
        if label_url is None:
            raise LamflowError(f"train.seeds: {stem!r} has no label in {labels}")
        label = decode_label(read_bytes(label_url), label_url)
        _copy_in(seeds, frames[stem], stem, label, classes, {"source": "bootstrap"})
    write_text_atomic(
        marker, json.dumps({"stems": list(stems), "images": images, "at": utc_now()}, indent=1)
    )
    log.info("seed set %s bootstrapped with %d seed(s)", seeds, len(stems))
    return list_seeds(seeds)


def bootstrap_from_zero_shot(
    seeds: str, images: str, zero_shot_out: str, classes: ClassList
) -> list[dict[str, Any]]:
    """Fill an empty seed set with the frames `zero_shot_seeds` wrote to `zero_shot_out`.

    Only the frames its report lists as used become seeds, each with its confidence map;
    `bootstrap.json` is written after the last one, as for human seeds. Returns the seed
    set's provenance list. LamflowError if the report names no usable frame.
    """
    marker = join(seeds, BOOTSTRAP_MARKER)
    if exists(marker):
        return list_seeds(seeds)
    report = json.loads(read_bytes(join(zero_shot_out, "report.json")))
    used = [str(s) for s in report.get("used", [])]
    if not used:
        reasons = "; ".join(f"{r['stem']}: {r['reason']}" for r in report.get("rejected", [])[:3])
        raise LamflowError(
            f"zero-shot seeds: none of {report.get('frames', 0)} frames is usable as a seed "
            f"({reasons or 'no frames'}); see {join(zero_shot_out, 'report.json')}"
        )
    frames = dict(list_images(images))
    present = {str(p["stem"]) for p in list_seeds(seeds)}
    for stem in used:
        if stem in present:
            continue
        label = decode_label(read_bytes(join(zero_shot_out, "labels", f"{stem}.png")), stem)
        conf_url = join(zero_shot_out, "confidence", f"{stem}.png")
        confidence = decode_label(read_bytes(conf_url), conf_url)
        provenance = {
            "source": "zero_shot",
            "backend": report.get("backend", ""),
            "version": report.get("version", ""),
        }
        _copy_in(seeds, frames[stem], stem, label, classes, provenance, confidence)
    write_text_atomic(
        marker,
        json.dumps({"stems": used, "images": images, "zero_shot": zero_shot_out, "at": utc_now()}),
    )
    log.info("seed set %s bootstrapped with %d zero-shot seed(s)", seeds, len(used))
    return list_seeds(seeds)


def import_seeds(
    images: str, labels: str, stems: list[str], out: str, classes: str, source: str = "import"
) -> list[dict[str, Any]]:
    """Copy seeds `stems` (frames in `images`, label PNGs in `labels`) into a seed set at `out`.

    Frame and label bytes are copied unchanged and the provenance holds no time and no path
    ({source, stem, drive, file, labeled_pixels, sha256, label_sha256}, keys sorted), so the
    same sources always give the same files: how a fresh clone rebuilds `data/seeds` to the
    hash its `data/seeds.dvc` records. Like `bootstrap_seed_set`, it runs once: a set whose
    `bootstrap.json` exists is returned as it is (a human's later edits are kept).
    Returns the set's provenance list. LamflowError names a stem without frame or label, or
    a label that is not a valid seed of its frame.
    """
    if exists(join(out, BOOTSTRAP_MARKER)):
        log.info("seed set %s exists (%s): not imported again", out, BOOTSTRAP_MARKER)
        return list_seeds(out)
    if not stems:
        raise LamflowError("no seed stems to import (train.seeds is empty)")
    class_list = load_classes(classes)
    frames = dict(list_images(images))
    for stem in stems:
        if stem not in frames:
            raise LamflowError(f"seed {stem!r} not found in {images}")
        label_url = find_by_stem(labels, stem)
        if label_url is None:
            raise LamflowError(f"seed {stem!r} has no label {stem}.png in {labels}")
        image_bytes, label_bytes = read_bytes(frames[stem]), read_bytes(label_url)
        record = checked_record(stem, image_bytes, label_bytes, class_list)
        file = frames[stem].rsplit("/", 1)[-1]
        record.update(source=source, drive=stem.split("_", 1)[0], file=file)
        write_seed(out, stem, file.rsplit(".", 1)[-1].lower(), image_bytes, label_bytes, record)
    marker = {"source": source, "stems": list(stems)}
    write_text_atomic(join(out, BOOTSTRAP_MARKER), json.dumps(marker, indent=1) + "\n")
    log.info("imported %d seed(s) into %s", len(stems), out)
    return list_seeds(out)
