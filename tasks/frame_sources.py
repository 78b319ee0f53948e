"""Where stages get their inputs by URL: the class list, seed frames with their labels and
provenance, and unlabeled frames (a drop's images, whose labels are never read).

Torch-free, so commands that only read frames or classes start fast.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from tqdm import tqdm

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_image, decode_label
from lam.sampling import evenly_spaced
from lamflow.storage import find_by_stem, list_images, read_bytes, sha256_bytes

log = logging.getLogger(__name__)


def load_classes(url: str) -> ClassList:
    """classes.json at `url` -> ClassList (LamflowError if missing or malformed)."""
    try:
        data = json.loads(read_bytes(url))
    except FileNotFoundError as exc:
        raise LamflowError(f"classes file not found: {url}") from exc
    except json.JSONDecodeError as exc:
        raise LamflowError(f"classes file {url} is not JSON: {exc}") from exc
    return ClassList.from_json(data)


def _seed_folders(images: str | list[str], labels: str | list[str]) -> list[tuple[str, str]]:
    """Pair image folders with label folders: one label folder serves every image folder."""
    image_urls = [images] if isinstance(images, str) else list(images)
    label_urls = [labels] if isinstance(labels, str) else list(labels)
    if not image_urls:
        raise LamflowError("no seed image folder given (--images)")
    if len(label_urls) == 1:
        label_urls = label_urls * len(image_urls)
    if len(label_urls) != len(image_urls):
        raise LamflowError(
            f"{len(image_urls)} seed image folders but {len(label_urls)} label folders: give one "
            "label folder, or one per image folder in the same order"
        )
    return list(zip(image_urls, label_urls))


def load_seed_frames(
    images: str | list[str], labels: str | list[str], stems: list[str], class_list: ClassList
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]]]:
    """Seed frames (H, W, 3) uint8, their labels (H, W) uint8 and provenance, by stem.

    images/labels: one folder URL each, or several: a stem is taken from the first image
    folder that holds it, with its label from the label folder paired with that one.
    Provenance is [{stem, image_sha256, label_sha256}], what train_report.json records.
    LamflowError names a missing frame or label, a size mismatch or an unknown class id.
    """
    folders = [(dict(list_images(im)), lb) for im, lb in _seed_folders(images, labels)]
    seed_images, seed_labels, provenance = [], [], []
    for stem in stems:
        holders = [(fr[stem], lb) for fr, lb in folders if stem in fr]
        if len(holders) > 1:
            log.warning(
                "seed %s is in %d image folders; taken from %s",
                stem,
                len(holders),
                holders[0][0],
            )
        found = holders[0] if holders else None
        if found is None:
            near = ", ".join(sorted(s for fr, _ in folders for s in fr)[:5])
            where = images if isinstance(images, str) else ", ".join(images)
            raise LamflowError(f"seed {stem!r} not found in {where} (frames: {near}, ...)")
        image_url, labels_url = found
        label_url = find_by_stem(labels_url, stem)
        if label_url is None:
            raise LamflowError(f"seed {stem!r} has no label {stem}.png in {labels_url}")
        image_bytes, label_bytes = read_bytes(image_url), read_bytes(label_url)
        image = decode_image(image_bytes, image_url)
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
    return seed_images, seed_labels, provenance


def pick_unlabeled(
    folders: list[str], max_frames: int, exclude: set[str] | None = None
) -> list[tuple[str, str]]:
    """(stem, URL) of at most `max_frames` frames of `folders` (0 = all), never a label.

    Evenly spaced over each folder's frames in name (time) order, shared between the folders
    in proportion to their size; stems in `exclude` (the seeds) are left out. LamflowError,
    naming the folders, when none is left.
    """
    listed = [
        [(stem, url) for stem, url in list_images(f) if stem not in (exclude or set())]
        for f in folders
    ]
    total = sum(len(items) for items in listed)
    if total == 0:
        raise LamflowError(
            f"no unlabeled frames (.jpg/.png) in {', '.join(folders) or 'no folder'}"
            + (" once the seeds are left out" if exclude else "")
        )
    if max_frames <= 0 or total <= max_frames:
        return [item for items in listed for item in items]
    # largest-remainder shares: they add up to exactly max_frames
    exact = [max_frames * len(items) / total for items in listed]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])[
        : max_frames - sum(shares)
    ]:
        shares[i] += 1
    return [item for items, n in zip(listed, shares) for item in evenly_spaced(items, n) if n]


def load_unlabeled_frames(
    folders: list[str], max_frames: int, exclude: set[str] | None = None, progress: bool = False
) -> tuple[list[np.ndarray], list[dict[str, str]], list[str]]:
    """Decoded frames (H, W, 3) uint8 of `pick_unlabeled(folders, max_frames, exclude)`.

    Only the frame files each folder lists are read (a labels/ folder beside them is never
    opened). A frame whose bytes cannot be decoded is skipped and named in the third list; a
    read error raises (storage faults are retried, never taken for bad data). Returns the
    frames, [{stem, sha256}] of those frames, and the skipped stems.
    """
    picked = pick_unlabeled(folders, max_frames, exclude)
    frames, records, skipped = [], [], []
    for stem, url in tqdm(picked, desc="unlabeled frames", disable=not progress, leave=False):
        data = read_bytes(url)
        try:
            frames.append(decode_image(data, url))
        except LamflowError as exc:
            log.warning("unlabeled frame %s cannot be decoded, skipped: %s", url, exc)
            skipped.append(stem)
            continue
        records.append({"stem": stem, "sha256": sha256_bytes(data)})
    if not frames:
        raise LamflowError(
            f"none of the {len(picked)} unlabeled frames picked from {', '.join(folders)} "
            "could be decoded"
        )
    return frames, records, skipped
