"""The fleet's seed set, `ROOT/seeds/`: the frames a human labeled, which `train` learns from.

Layout (one file per seed in each folder, named by the seed's stem):
    images/STEM.jpg|png     the frame's bytes, as the drop or the archive held them
    labels/STEM.png         class ids, void (the ignore id) where the human said nothing
    confidence/STEM.png     only for zero-shot seeds: per-pixel confidence x 255, which
                            `train` weights the label's pixels by (human seeds have none)
    provenance/STEM.json    where the seed came from; written last, so a seed exists exactly
                            when its provenance does (a crash mid-add leaves no half seed)
    bootstrap.json          the first seeds were all copied in (written after the last one)

Provenance: {stem, source ("bootstrap" | "zero_shot" | "labelstudio" | ...), drive, sha256
(frame bytes), label_sha256, task_id, annotation_id, annotator, annotated_at, added_at}.

Seeds come from the first human seeds (`train.seeds` of the archive, or `seed_masks` output)
and, every night, from the review loop. Dense and sparse labels are both valid: training ignores
void pixels. A label is validated before anything is written (size against the frame, ids
against the class list, at least one labeled pixel), so a bad annotation is reported and left
out, never half-written.

The DVC pipeline's seed set `data/seeds` has the same format (versioned by `data/seeds.dvc`):
`import_seeds` (tasks/seed_bootstrap.py, with the other ways a set starts) builds it
reproducibly (`make data`), and stage `seed_set` merges it with the
`seed_masks` labels into the set its `train` reads (docs/pipeline.md, "DVC").
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import yaml

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_image, decode_label, encode_png
from lamflow.storage import (
    exists,
    find_by_stem,
    get_fs,
    join,
    list_dir,
    list_images,
    read_bytes,
    safe_name,
    sha256_bytes,
    write_bytes_atomic,
    write_text_atomic,
)
from lamflow.timestamps import utc_now
from tasks.frame_sources import load_classes

log = logging.getLogger(__name__)
BOOTSTRAP_MARKER = "bootstrap.json"  # written last by tasks/seed_bootstrap.py


def seed_set_url(root: str) -> str:
    """ROOT/seeds: the fleet's seed set."""
    return join(root, "seeds")


def check_seed_label(label: np.ndarray, frame_hw: tuple[int, int], classes: ClassList) -> None:
    """Raise LamflowError unless `label` ((H, W) uint8) can be a seed of a (H, W) frame.

    A seed must match its frame's size, hold only class ids or the ignore id, and label at
    least one pixel (an all-void label teaches nothing and hides a reviewer's mistake).
    """
    if label.ndim != 2 or tuple(label.shape) != tuple(frame_hw):
        shown = "x".join(str(d) for d in label.shape)
        raise LamflowError(
            f"label is {shown}, frame is {frame_hw[0]}x{frame_hw[1]} (height x width)"
        )
    classes.check_label(label)
    if not (label != classes.ignore_index).any():
        raise LamflowError("label is empty: no pixel carries a class")


def list_seeds(seeds: str) -> list[dict[str, Any]]:
    """Provenance of every complete seed of the set at `seeds`, sorted by stem."""
    out = []
    for name in list_dir(join(seeds, "provenance")):
        if not name.endswith(".json"):
            continue
        try:
            out.append(dict(json.loads(read_bytes(join(seeds, "provenance", name)))))
        except (json.JSONDecodeError, FileNotFoundError) as exc:
            log.warning("seed provenance %s unreadable, seed ignored: %s", name, exc)
    return sorted(out, key=lambda p: str(p["stem"]))


def add_seed(
    seeds: str,
    stem: str,
    image_bytes: bytes,
    image_suffix: str,
    label: np.ndarray,
    classes: ClassList,
    provenance: dict[str, Any],
    confidence: np.ndarray | None = None,
) -> dict[str, Any]:
    """Validate and add (or replace) seed `stem`; returns the provenance written.

    Args:
        image_bytes: the frame's encoded bytes; image_suffix: "jpg" or "png".
        label: (H, W) uint8 class ids, void = classes.ignore_index.
        provenance: source, drive, task_id, annotator, ... (stem and hashes are added here).
        confidence: a zero-shot seed's (H, W) uint8 confidence x 255; None for a human seed
            (a human replacing a zero-shot seed also removes its confidence map).
    Raises LamflowError (nothing written) if the label is not a valid seed of the frame.
    """
    safe_name(stem, "seed stem")
    suffix = image_suffix.lower().lstrip(".")
    if suffix not in ("jpg", "jpeg", "png"):
        raise LamflowError(f"seed {stem}: frame suffix {image_suffix!r} is not jpg or png")
    image = decode_image(image_bytes, f"seed {stem}")
    try:
        check_seed_label(label, image.shape[:2], classes)
    except LamflowError as exc:
        raise LamflowError(f"seed {stem}: {exc}") from exc
    label_bytes = encode_png(np.ascontiguousarray(label, dtype=np.uint8))
    conf_bytes = None
    if confidence is not None:
        if confidence.shape != label.shape or confidence.dtype != np.uint8:
            raise LamflowError(
                f"seed {stem}: confidence must be a uint8 map of the label's size "
                f"{label.shape[0]}x{label.shape[1]}, got {confidence.dtype} {confidence.shape}"
            )
        conf_bytes = encode_png(np.ascontiguousarray(confidence))
    record = {
        **provenance,
        "stem": stem,
        "labeled_pixels": int((label != classes.ignore_index).sum()),
        "added_at": utc_now(),
    }
    return write_seed(seeds, stem, suffix, image_bytes, label_bytes, record, conf_bytes)


def write_seed(
    seeds: str,
    stem: str,
    suffix: str,
    image_bytes: bytes,
    label_bytes: bytes,
    record: dict[str, Any],
    conf_bytes: bytes | None = None,
) -> dict[str, Any]:
    """Write one checked seed's files, provenance last; returns the provenance written.

    Adds the sha256 of the bytes written to `record`. Keys are sorted and nothing but `record`
    goes into the provenance, so the same seed written twice gives the same bytes.
    """
    record = {**record, "sha256": sha256_bytes(image_bytes)}
    record["label_sha256"] = sha256_bytes(label_bytes)
    if conf_bytes is not None:
        record["confidence_sha256"] = sha256_bytes(conf_bytes)
    conf_url = join(seeds, "confidence", f"{stem}.png")
    write_bytes_atomic(join(seeds, "images", f"{stem}.{suffix}"), image_bytes)
    write_bytes_atomic(join(seeds, "labels", f"{stem}.png"), label_bytes)
    if conf_bytes is not None:
        write_bytes_atomic(conf_url, conf_bytes)
    elif exists(conf_url):
        fs, path = get_fs(conf_url)
        fs.rm(path)
    provenance = json.dumps(record, indent=1, sort_keys=True) + "\n"
    write_text_atomic(join(seeds, "provenance", f"{stem}.json"), provenance)
    # A replaced seed may change its suffix: the old frame file must not linger beside it
    # (removed only after the new one is complete, so a crash never leaves a seed frameless).
    for old in ("jpg", "jpeg", "png"):
        if old != suffix and exists(join(seeds, "images", f"{stem}.{old}")):
            fs, path = get_fs(join(seeds, "images", f"{stem}.{old}"))
            fs.rm(path)
    return record


def seed_set_fingerprint(seeds: str) -> list[list[str]]:
    """[[stem, frame sha256, label sha256], ...] of the files as they are now.

    What a model trained on the set depends on. Hashes the bytes, not the provenance's record
    of them, so a label edited by hand also trains a new model. For a zero-shot seed the label
    hash covers its confidence map too (label bytes + confidence bytes).
    """
    frames = dict(list_images(join(seeds, "images"))) if exists(join(seeds, "images")) else {}
    out = []
    for p in list_seeds(seeds):
        stem = str(p["stem"])
        label = find_by_stem(join(seeds, "labels"), stem)
        if stem not in frames or label is None:
            raise LamflowError(f"seed set {seeds}: seed {stem} lacks its frame or its label")
        label_bytes = read_bytes(label)
        conf = join(seeds, "confidence", f"{stem}.png")
        if exists(conf):
            label_bytes += read_bytes(conf)
        out.append([stem, sha256_bytes(read_bytes(frames[stem])), sha256_bytes(label_bytes)])
    return out


def checked_record(
    stem: str, image_bytes: bytes, label_bytes: bytes, classes: ClassList
) -> dict[str, Any]:
    """{stem, labeled_pixels} of a seed whose label is valid for its frame (else LamflowError)."""
    safe_name(stem, "seed stem")
    label = decode_label(label_bytes, f"seed {stem} label")
    try:
        check_seed_label(label, decode_image(image_bytes, f"seed {stem}").shape[:2], classes)
    except LamflowError as exc:
        raise LamflowError(f"seed {stem}: {exc}") from exc
    return {"stem": stem, "labeled_pixels": int((label != classes.ignore_index).sum())}


def seed_set(
    seeds: str,
    out: str,
    classes: str,
    masks: str = "",
    images: str = "",
    selected: str = "",
    report: str = "",
) -> dict[str, Any]:
    """Stage `seed_set`: write the seed set `train` reads to `out`.

    Args:
        seeds: a seed set of human or imported labels (`data/seeds` in the DVC pipeline);
            copied byte for byte (a label edited by hand gets its new sha256 in provenance).
        out: the merged seed set (replaced: seeds no longer in the sources are removed).
        classes: URL of classes.json the labels are checked against.
        masks: the `seed_masks` output (STEM.png: labels made from human prompts); each becomes
            a seed with its frame from `images`, unless `seeds` holds that stem.
        selected: seeds.yaml of `select_seeds`; the report says which chosen frames have a seed.
        report: URL of a JSON report to write (counts for `dvc metrics show`, and stems).
    Every seed is checked (frame decodes; label fits the frame and the class list and labels a
    pixel), and a bad one fails the stage naming it. The same inputs give the same bytes in
    `out`, which holds nothing else, so `train` re-runs only when a seed changes.
    Returns the report: {seeds, from_seeds, from_masks, shadowed_masks, relabeled,
    selected, selected_labeled, selected_missing}.
    """
    class_list = load_classes(classes)
    written: list[str] = []
    relabeled: list[str] = []
    for record in list_seeds(seeds):
        stem = str(record["stem"])
        frame = find_by_stem(join(seeds, "images"), stem, (".jpg", ".jpeg", ".png"))
        label = find_by_stem(join(seeds, "labels"), stem)
        if frame is None or label is None:
            raise LamflowError(f"seed set {seeds}: seed {stem} lacks its frame or its label")
        image_bytes, label_bytes = read_bytes(frame), read_bytes(label)
        record.update(checked_record(stem, image_bytes, label_bytes, class_list))
        if record.get("label_sha256") != sha256_bytes(label_bytes):
            relabeled.append(stem)
        conf_url = find_by_stem(join(seeds, "confidence"), stem)
        conf = read_bytes(conf_url) if conf_url else None
        suffix = frame.rsplit(".", 1)[-1]
        write_seed(out, stem, suffix, image_bytes, label_bytes, record, conf)
        written.append(stem)
    from_masks, shadowed = [], []
    mask_stems = [n[: -len(".png")] for n in list_dir(masks) if n.endswith(".png")] if masks else []
    frames = dict(list_images(images)) if mask_stems else {}
    for stem in mask_stems:
        if stem in written:
            shadowed.append(stem)
            continue
        if stem not in frames:
            raise LamflowError(f"seed mask {stem}.png in {masks} has no frame {stem}.* in {images}")
        image_bytes, label_bytes = read_bytes(frames[stem]), read_bytes(join(masks, f"{stem}.png"))
        record = checked_record(stem, image_bytes, label_bytes, class_list)
        file = frames[stem].rsplit("/", 1)[-1]
        record.update(source="seed_masks", drive=stem.split("_", 1)[0], file=file)
        write_seed(out, stem, file.rsplit(".", 1)[-1].lower(), image_bytes, label_bytes, record)
        from_masks.append(stem)
    kept = set(written) | set(from_masks)
    if not kept:
        raise LamflowError(
            f"no seeds: {seeds} holds none and {masks or 'no seed_masks output'} neither "
            "(`make data` imports the CamVid seeds into data/seeds)"
        )
    _remove_others(out, kept)
    chosen: list[str] = []
    if selected:  # seeds.yaml's stems by rank, as tasks.select_seeds.read_seed_stems reads them
        # (not imported: every importer of this module, train included, would then depend on
        # the embedder's code)
        rows = yaml.safe_load(read_bytes(selected)).get("seeds") or []
        chosen = [str(row["stem"]) for row in sorted(rows, key=lambda r: r["rank"])]
    missing = [s for s in chosen if s not in kept]
    doc: dict[str, Any] = {
        "seeds": len(kept),
        "from_seeds": written,
        "from_masks": from_masks,
        "shadowed_masks": shadowed,
        "relabeled": relabeled,
        "selected": len(chosen),
        "selected_labeled": [s for s in chosen if s in kept],
        "selected_missing": missing,
    }
    if missing:
        log.info(
            "%d of %d frames select_seeds chose have no seed label yet: %s",
            len(missing),
            len(chosen),
            ", ".join(missing),
        )
    if report:
        write_text_atomic(report, json.dumps(doc, indent=1) + "\n")
    return doc


def _remove_others(seeds: str, keep: set[str]) -> None:
    """Delete the files of seeds not in `keep` (provenance first: no half seed is listed)."""
    for folder in ("provenance", "images", "labels", "confidence"):
        for name in list_dir(join(seeds, folder)):
            if name.rsplit(".", 1)[0] not in keep:
                fs, path = get_fs(join(seeds, folder, name))
                fs.rm(path)
