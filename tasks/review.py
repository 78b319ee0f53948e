"""Human review round-trip: export frames to CVAT / Label Studio, import corrections back.

Export: the seed frames (seeds.yaml) and the frames QC flagged (qc's review.json), with their
current labels as editable pre-annotations when a label folder is given, as
  * `cvat`: CVAT for images 1.1 XML (polygons), upload with Actions > Upload annotations;
  * `cityscapes`: a Cityscapes 1.0 zip for CVAT (exact masks, void kept);
  * `labelstudio`: Label Studio tasks JSON (brush RLE) + `labeling_config.xml` beside it.
Import: the same formats as exported by those tools -> seed label PNGs `out/STEM.png`.
Also `export_coco`: a labeled drop as one COCO JSON with RLE masks.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from tqdm import tqdm

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.formats.coco import labels_to_coco
from lam.formats.cvat import (
    cityscapes_zip_to_labels,
    cvat_xml_to_labels,
    labels_to_cityscapes_zip,
    labels_to_cvat_xml,
)
from lam.formats.labelstudio import labeling_config, labels_to_tasks, tasks_to_labels
from lam.imageio import decode_image, decode_label, encode_png
from lamflow.storage import (
    find_by_stem,
    join,
    list_images,
    read_bytes,
    read_text,
    write_bytes_atomic,
    write_text_atomic,
)
from tasks.frame_sources import load_classes
from tasks.label_folder import label_pngs
from tasks.select_seeds import read_seed_stems

log = logging.getLogger(__name__)
FORMATS = ("cvat", "cityscapes", "labelstudio")


def review_stems(seeds: str | None, flagged: str | None, stems: list[str] | None) -> list[str]:
    """Frames to review, without repeats: explicit stems, then seeds, then QC-flagged ones."""
    out = list(stems or [])
    if seeds:
        out += read_seed_stems(seeds)
    if flagged:
        try:
            out += [row["stem"] for row in json.loads(read_text(flagged))]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LamflowError(f"{flagged} is not a qc review.json: {exc}") from exc
    return list(dict.fromkeys(out))


def review_export(
    images: str,
    out: str,
    classes: str,
    fmt: str = "cvat",
    seeds: str | None = None,
    flagged: str | None = None,
    labels: str | None = None,
    stems: list[str] | None = None,
    image_root: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Write a review task for CVAT or Label Studio to `out` (a file URL).

    Args:
        images: folder of frames; classes: classes.json URL.
        fmt: "cvat" (XML), "cityscapes" (zip) or "labelstudio" (JSON).
        seeds / flagged / stems: which frames (seeds.yaml, qc review.json, explicit stems).
        labels: folder of current label PNGs (or an annotate output) to pre-fill; frames
            without a label are exported empty (cityscapes needs a label for every frame).
        image_root: URL prefix Label Studio loads images from (default: the frame's URL).
    """
    if fmt not in FORMATS:
        raise LamflowError(f"unknown review format {fmt!r}; known: {', '.join(FORMATS)}")
    class_list = load_classes(classes)
    wanted = review_stems(seeds, flagged, stems)
    if not wanted:
        raise LamflowError("nothing to export: give seeds, flagged (qc review.json) or stems")
    frames = dict(list_images(images))
    missing = [s for s in wanted if s not in frames]
    if missing:
        raise LamflowError(f"frames {missing[:5]} not found in {images}")
    label_dir = label_pngs(labels) if labels else None
    items: list[tuple[str, str, np.ndarray | None, tuple[int, int]]] = []
    for stem in tqdm(wanted, desc="review export", unit="frame", disable=not progress):
        url = frames[stem]
        label = None
        if label_dir and (lab_url := find_by_stem(label_dir, stem)) is not None:
            label = decode_label(read_bytes(lab_url), lab_url)
            class_list.check_label(label, where=lab_url)
            size = label.shape
        else:
            size = decode_image(read_bytes(url), url).shape[:2]
        items.append((stem, url.rsplit("/", 1)[-1], label, (int(size[0]), int(size[1]))))
    if fmt == "cvat":
        data = labels_to_cvat_xml(
            [(name, lab) for _, name, lab, _ in items],
            class_list,
            size_hw={name: hw for _, name, _, hw in items},
        )
    elif fmt == "cityscapes":
        unlabelled = [s for s, _, lab, _ in items if lab is None]
        if unlabelled:
            raise LamflowError(
                f"cityscapes export needs a label for every frame; none for "
                f"{unlabelled[:5]} (use --format cvat or labelstudio)"
            )
        data = labels_to_cityscapes_zip(
            [(s, lab) for s, _, lab, _ in items if lab is not None], class_list
        )
    else:
        tasks = labels_to_tasks(
            [
                (s, join(image_root, name) if image_root else frames[s], lab)
                for s, name, lab, _ in items
            ],
            class_list,
        )
        data = json.dumps(tasks).encode("utf-8")
        parent = out.rsplit("/", 1)[0] if "/" in out else "."
        write_text_atomic(join(parent, "labeling_config.xml"), labeling_config(class_list))
    write_bytes_atomic(out, data)
    log.info("exported %d frame(s) for review (%s) -> %s", len(items), fmt, out)
    return {"out": out, "format": fmt, "frames": [s for s, *_ in items]}


def _guess_format(url: str) -> str:
    lower = url.lower()
    if lower.endswith(".xml"):
        return "cvat"
    if lower.endswith(".zip"):
        return "cityscapes"
    if lower.endswith(".json"):
        return "labelstudio"
    raise LamflowError(f"cannot tell the format of {url}: pass fmt (one of {', '.join(FORMATS)})")


def read_review_file(
    src: str, class_list: ClassList, fmt: str | None = None, annotated_only: bool = False
) -> dict[str, Any]:
    """Parse corrected annotations (CVAT XML / Cityscapes zip / Label Studio JSON) at `src`
    into {stem: (H, W) uint8 class ids, void where unlabelled}.

    `annotated_only`: Label Studio tasks without a finished (non-cancelled) annotation are left
    out instead of falling back to their predictions, so the model's own labels never come
    back as a human's (the review loop's inbox)."""
    fmt = fmt or _guess_format(src)
    data = read_bytes(src)
    if fmt == "cvat":
        by_name = cvat_xml_to_labels(data, class_list)
        return {name.rsplit("/", 1)[-1].rsplit(".", 1)[0]: lab for name, lab in by_name.items()}
    if fmt == "cityscapes":
        return dict(cityscapes_zip_to_labels(data, class_list))
    if fmt == "labelstudio":
        try:
            tasks = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LamflowError(f"{src} is not JSON: {exc}") from exc
        if isinstance(tasks, dict):
            tasks = [tasks]
        if annotated_only:
            tasks = [
                t
                for t in tasks
                if any(not a.get("was_cancelled") for a in t.get("annotations") or [])
            ]
        return dict(tasks_to_labels(tasks, class_list))
    raise LamflowError(f"unknown review format {fmt!r}; known: {', '.join(FORMATS)}")


def review_import(
    src: str, out: str, classes: str, fmt: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Read corrected annotations (CVAT XML / Cityscapes zip / Label Studio JSON) from `src`
    and write them as seed label PNGs `out/STEM.png` (class ids, void where unlabelled)."""
    fmt = fmt or _guess_format(src)
    labels = read_review_file(src, load_classes(classes), fmt)
    for stem, lab in tqdm(sorted(labels.items()), desc="review import", disable=not progress):
        write_bytes_atomic(join(out, f"{stem}.png"), encode_png(lab))
    log.info("imported %d reviewed label(s) (%s) -> %s", len(labels), fmt, out)
    return {"out": out, "format": fmt, "frames": sorted(labels)}


def export_coco(labels: str, out: str, classes: str, progress: bool = True) -> dict[str, Any]:
    """A labeled drop (annotate output or folder of label PNGs) -> one COCO JSON with RLE."""
    class_list = load_classes(classes)
    label_dir = label_pngs(labels)
    pngs = list_images(label_dir)
    if not pngs:
        raise LamflowError(f"no label PNGs in {label_dir}")
    frames = []
    for stem, url in tqdm(pngs, desc="export coco", unit="frame", disable=not progress):
        lab = decode_label(read_bytes(url), url)
        class_list.check_label(lab, where=url)
        frames.append((f"{stem}.jpg", lab))
    coco = labels_to_coco(frames, class_list, info={"description": f"lamflow labels {labels}"})
    write_text_atomic(out, json.dumps(coco))
    return {"out": out, "images": len(frames), "annotations": len(coco["annotations"])}
