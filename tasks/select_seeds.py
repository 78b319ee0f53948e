"""Stage `select_seeds`: pick the few frames of a drop worth annotating; writes seeds.yaml.

Every frame is embedded once (pooled multi-scale backbone features, cached per frame sha256 as
`<cache>/<sha256>-<backbone>-<short_side>.npy`; with `start: patches` also a grid of patch
embeddings, `...-patches<rows>x<cols>t<taps>.npy`), near-duplicates are dropped, B frames are
chosen by typiclust or k-center, and — when per-frame class presence is known (an `annotate`
output folder, whose manifest lists each frame's class fractions, or a folder of label PNGs) —
a coverage pass adds frames until every vocabulary class seen in the drop is in some seed.
seeds.yaml ranks the seeds and says for each why it was chosen.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from lam.build import build_backbone
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_image, decode_label
from lam.seeds.embed import embed_frames_and_patches
from lam.seeds.select import select_seeds as choose_seeds
from lamflow.params import SelectSeedsParams
from lamflow.storage import (
    exists,
    find_by_stem,
    join,
    list_images,
    read_bytes,
    read_text,
    sha256_bytes,
    write_bytes_atomic,
    write_text_atomic,
)
from tasks.frame_sources import load_classes
from tasks.label_folder import MANIFEST, read_manifest

log = logging.getLogger(__name__)
SCHEMA = "lamflow.seeds/1"


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def embed_drop(
    frames: list[tuple[str, str]],
    params: SelectSeedsParams,
    cache: str,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Embeddings of `frames` [(stem, url)], using the cache.

    Returns:
        frame embeddings (N, D) float32, patch embeddings (N, rows * cols, P) float32 (None
        unless k-center starts from patches: `params.start == "patches"`) and the sha256s.
    """
    backbone = None
    use_patches = params.start == "patches" and params.method == "kcenter"
    grid = (params.patch_grid[0], params.patch_grid[1]) if use_patches else None
    rows, patch_rows, shas = [], [], []
    for _stem, url in tqdm(frames, desc="embed", unit="frame", disable=not progress):
        data = read_bytes(url)
        sha = sha256_bytes(data)
        key = join(cache, f"{sha}-{params.backbone}-{params.short_side}.npy")
        pkey = ""
        if grid:
            pkey = join(
                cache,
                f"{sha}-{params.backbone}-{params.short_side}-patches{grid[0]}x{grid[1]}"
                f"t{params.patch_taps}.npy",
            )
        if exists(key) and (not grid or exists(pkey)):
            rows.append(np.load(io.BytesIO(read_bytes(key))))
            if grid:
                patch_rows.append(np.load(io.BytesIO(read_bytes(pkey))))
        else:
            if backbone is None:
                backbone = build_backbone(params.backbone)
            vec, patches = embed_frames_and_patches(
                backbone,
                [decode_image(data, url)],
                params.short_side,
                grid=grid or (1, 1),
                patch_taps=params.patch_taps,
            )
            write_bytes_atomic(key, _npy(vec[0]))
            rows.append(vec[0])
            if grid:
                write_bytes_atomic(pkey, _npy(patches[0]))
                patch_rows.append(patches[0])
        shas.append(sha)
    patch_array = np.stack(patch_rows).astype(np.float32) if grid else None
    return np.stack(rows).astype(np.float32), patch_array, shas


def vocabulary_classes(url: str) -> list[str]:
    """Class names a vocabulary file asks to cover.

    Accepts the `vocabulary` stage's vocabulary.yaml (its mapping's target classes, minus
    'unmapped'), a classes.json, or a YAML/JSON list of names.
    """
    text = read_text(url)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LamflowError(f"vocabulary {url} is not YAML/JSON: {exc}") from exc
    if isinstance(doc, list) and all(isinstance(n, str) for n in doc):
        return list(doc)
    if isinstance(doc, dict) and "mapping" in doc:
        names = [r.get("target", "") for r in doc["mapping"] or []]
        return sorted({n for n in names if n and n != "unmapped"})
    if isinstance(doc, dict) and "classes" in doc:
        return list(ClassList.from_json(doc).names)
    raise LamflowError(
        f"vocabulary {url}: expected vocabulary.yaml (with 'mapping'), classes.json, or a list "
        f"of class names"
    )


def class_presence(
    labels: str, stems: list[str], classes: ClassList, min_fraction: float = 0.001
) -> np.ndarray:
    """(N, C) bool: class c covers >= min_fraction of frame i, per an annotate run or PNGs.

    `labels` is an `annotate` output folder (manifest.jsonl with class_fractions) or a folder
    of label PNGs (STEM.png). Frames with no entry show no class.
    """
    presence = np.zeros((len(stems), classes.num_classes), dtype=bool)
    index = {s: i for i, s in enumerate(stems)}
    if exists(join(labels, MANIFEST)):
        for rec in read_manifest(labels):
            i = index.get(str(rec.get("stem")))
            for name, frac in (rec.get("class_fractions") or {}).items():
                if i is not None and name in classes.names and frac >= min_fraction:
                    presence[i, classes.names.index(name)] = True
        return presence
    for stem, i in index.items():
        url = find_by_stem(labels, stem)
        if url is None:
            continue
        lab = decode_label(read_bytes(url), url)
        counts = np.bincount(lab.reshape(-1), minlength=256)[: classes.num_classes]
        presence[i] = counts >= min_fraction * lab.size
    return presence


def select_seeds(
    images: str,
    out: str,
    params: SelectSeedsParams | None = None,
    vocabulary: str | None = None,
    progress: bool = True,
    labels: str | None = None,
    classes: str | None = None,
    targets: str | None = None,
) -> dict[str, Any]:
    """Choose seed frames among the frames in `images` and write the ranked list to `out`.

    Args:
        images: URL of a folder of frames (STEM.jpg/.png), one drop.
        out: URL of seeds.yaml to write (atomically).
        params: the `select_seeds` section of params.yaml.
        vocabulary: classes that must be covered (vocabulary.yaml, classes.json or a list);
            None = every class of `classes`.
        labels: per-frame class presence for the coverage pass: an `annotate` output folder or
            a folder of label PNGs; None skips the coverage pass.
        classes: classes.json naming the ids in `labels` (needed with `labels`).
        targets: URL of a folder of the frames the seeds must serve, when seeds are picked
            outside the drop to label (an archive, an earlier drive): typicality (which
            candidate most frames to label look like) and patch coverage (whose patches
            resemble theirs) are then measured against these frames, which sets k-center's
            first seed and typiclust's clusters (see lam.seeds.select); the class coverage
            pass is unchanged. None = `images`.
    Returns:
        the document written to `out`.
    """
    params = params or SelectSeedsParams()
    started = time.perf_counter()
    frames = list_images(images)
    if not frames:
        raise LamflowError(f"no frames (.jpg/.png) in {images}")
    cache = params.cache or join(_parent(out), "embeddings")
    emb, patches, shas = embed_drop(frames, params, cache, progress)
    stems = [s for s, _ in frames]
    target_emb = target_patches = None
    if targets:
        target_frames = list_images(targets)
        if not target_frames:
            raise LamflowError(f"no target frames (.jpg/.png) in {targets}")
        target_emb, target_patches, _ = embed_drop(target_frames, params, cache, progress)
    presence, names, required = None, None, None
    if params.coverage and labels:
        if not classes:
            raise LamflowError("select_seeds: `labels` needs `classes` (a classes.json URL)")
        class_list = load_classes(classes)
        presence = class_presence(labels, stems, class_list)
        names = list(class_list.names)
        if vocabulary:
            wanted = vocabulary_classes(vocabulary)
            required = [n for n in wanted if n in names]
            ignored = sorted(set(wanted) - set(names))
            if ignored:
                log.warning("vocabulary classes %s are not in %s; not covered", ignored, classes)
    selection = choose_seeds(
        emb,
        params.budget,
        method=params.method,
        dedupe_threshold=params.dedupe_threshold,
        presence=presence,
        class_names=names,
        required=required,
        k_neighbors=params.k_neighbors,
        seed=params.seed,
        targets=target_emb,
        patches=patches,
        target_patches=target_patches,
    )
    seeds = []
    for s in selection.seeds:
        row: dict[str, Any] = {"rank": s.rank, "stem": stems[s.index], "reason": s.reason}
        if s.cluster is not None:
            row["cluster"] = s.cluster
            row["cluster_size"] = s.cluster_size
        row["typicality"] = s.typicality
        if s.coverage is not None:
            row["patch_coverage"] = s.coverage
        if s.reason == "kcenter":
            row["distance"] = s.distance
        if presence is not None:
            row["classes"] = s.classes
            row["adds_classes"] = s.adds
        row["sha256"] = shas[s.index]
        seeds.append(row)
    doc = {
        "schema": SCHEMA,
        "images": images,
        "frames": len(frames),
        "kept_after_dedupe": len(selection.kept),
        "duplicates": {stems[d]: stems[k] for d, k in selection.duplicate_of.items()},
        "method": params.method,
        "targets": {
            "source": targets or images,
            "frames": 0 if target_emb is None else len(target_emb),
        },
        "coverage": {
            "source": labels or "",
            "required": required if required is not None else (names or []),
            "uncovered": selection.uncovered,
        },
        "params": params.model_dump(),
        "seeds": seeds,
    }
    # The file holds the selection only: the same selection is the same bytes, so DVC re-runs
    # nothing after it. The run's time is in the returned summary.
    write_text_atomic(out, yaml.safe_dump(doc, sort_keys=False))
    doc["seconds"] = round(time.perf_counter() - started, 2)
    log.info("selected %d seed(s) of %d frames -> %s", len(seeds), len(frames), out)
    return doc


def read_seed_stems(url: str) -> list[str]:
    """Stems of seeds.yaml at `url`, in rank order."""
    try:
        doc = yaml.safe_load(read_text(url))
        return [row["stem"] for row in sorted(doc["seeds"], key=lambda r: r["rank"])]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise LamflowError(f"{url} is not a seeds.yaml written by select_seeds: {exc}") from exc
