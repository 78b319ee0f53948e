"""Stage `zero_shot_seeds`: frames + a class list -> seed labels with no human input.

For each frame `images/STEM.*` the configured backend (lam/zero_shot: `grounded_sam`,
`maskclip` or `source_model`) writes, under `out`:

    labels/STEM.png        class ids, void where the backend is unsure (used frames only)
    confidence/STEM.png    per-pixel confidence x 255 (uint8; 0 on void), read by `train`
    rejected/STEM.png      the label of a frame that was not used, kept for inspection
    records/STEM.json      frame sha256, backend version, params, stats, what the models said
    report.json            used and rejected frames (with the reason), seconds; source_model:
                           the model's version, class map and weights (with their licence)

A frame is *used* only if at least `min_labelled_fraction` of its pixels are labelled and
their mean confidence is at least `min_mean_confidence`; other frames are reported, not used,
so a backend that found nothing never teaches `train` that the frame is all void. A frame whose
bytes do not decode is rejected the same way (and tried again on the next run). Records
make re-runs skip frames whose bytes, backend and params are unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_image, encode_png
from lam.sampling import evenly_spaced
from lam.zero_shot import ZERO_SHOT
from lam.zero_shot.refinement import class_phrases
from lam.zero_shot.result import SeedLabel, ZeroShotSeeder
from lamflow.params import ModelParams, VocabularyParams, ZeroShotSeedsParams
from lamflow.storage import (
    exists,
    get_fs,
    join,
    list_images,
    read_bytes,
    sha256_bytes,
    write_bytes_atomic,
    write_text_atomic,
)
from tasks.frame_sources import load_classes

log = logging.getLogger(__name__)
REPORT = "report.json"


def check_models(params: ZeroShotSeedsParams, model: ModelParams | None = None) -> None:
    """Fail before any frame is read if the backend's model paths are unset or wrong.

    One line naming the params key: `zero_shot_seeds.detector_dir`, `.sam` or `.clip_dir`;
    for source_model `.source_model_dir`, or `.source_backbone` / `model.backbone` when
    neither names a source network (tasks.source_model.check_zero_seed_model).
    """
    from lam.zero_shot.model_dir import check_model_dir
    from lam.zero_shot.sam import check_sam

    key = "zero_shot_seeds"
    if params.backend == "source_model":
        from tasks.source_model import check_zero_seed_model

        check_zero_seed_model(params, model or ModelParams())
        return
    if params.backend == "grounded_sam":
        if not params.detector_dir:
            raise LamflowError(
                f"grounded_sam needs a detector: set {key}.detector_dir to a local Grounding DINO "
                "or OWLv2 directory (docs/zero_shot.md)"
            )
        check_model_dir(
            params.detector_dir, f"{key}.detector_dir", ("grounding-dino", "owlv2", "owlvit")
        )
        check_sam(params.sam, f"grounded_sam ({key}.sam)")
    else:
        if not params.clip_dir:
            raise LamflowError(
                f"maskclip needs a CLIP model: set {key}.clip_dir to a local transformers "
                "CLIPModel directory (docs/zero_shot.md)"
            )
        check_model_dir(params.clip_dir, f"{key}.clip_dir", ("clip",))
        if params.sam:
            check_sam(params.sam, f"maskclip automatic masks ({key}.sam)", automatic=True)


def build_seeder(
    params: ZeroShotSeedsParams,
    vocabulary: VocabularyParams,
    classes: ClassList,
    model: ModelParams | None = None,
) -> ZeroShotSeeder:
    """The backend named by params.backend, with the vocabulary's tagger and LLM if asked;
    source_model: around the model `tasks.source_model.zero_seed_model` builds or loads."""
    from tasks.vocabulary import build_llm, build_tagger

    factory = ZERO_SHOT.get(params.backend)
    if params.backend == "source_model":
        from tasks.source_model import zero_seed_model

        net, model_names, model_version, provenance = zero_seed_model(
            params, model or ModelParams(), classes
        )
        return factory(
            list(classes.names),
            classes.ignore_index,
            model=net,
            model_names=model_names,
            model_version=model_version,
            device=params.device,
            min_confidence=params.min_confidence,
            provenance=provenance,
        )
    llm = build_llm(vocabulary) if params.use_llm and params.backend == "grounded_sam" else None
    tagger = build_tagger(vocabulary) if llm is not None and params.tags else None
    captioner = None
    if llm is not None and params.caption_model_dir:
        from lam.zero_shot.grounded_sam import VlmCaptioner

        captioner = VlmCaptioner(params.caption_model_dir)

    def embed(texts: Any) -> np.ndarray:  # MiniLM, loaded only if a phrase needs mapping
        from lam.vocabulary.text_embedding import default_embedder

        return default_embedder().embed(texts)

    common = {
        "sam": params.sam,
        "sam_model_type": params.sam_model_type,
        "device": params.device,
        "names_table": params.names,
    }
    if params.backend == "grounded_sam":
        options = {
            **common,
            "detector_dir": params.detector_dir,
            "box_threshold": params.box_threshold,
            "text_threshold": params.text_threshold,
            "top_points": params.top_points,
            "nms_iou": params.nms_iou,
            "tagger": tagger,
            "captioner": captioner,
            "llm": llm,
            "embed": embed,
        }
    else:
        options = {
            **common,
            "clip_dir": params.clip_dir,
            "short_side": params.short_side,
            "min_confidence": params.min_confidence,
            "points_per_side": params.points_per_side,
        }
    return factory(list(classes.names), classes.ignore_index, **options)


def record_key(
    image_sha256: str,
    params: ZeroShotSeedsParams,
    vocabulary: VocabularyParams,
    classes: ClassList,
    model_key: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a frame's seed label depends on: its bytes, the class list, the backend's params
    (not `device`, which changes no answer on purpose), when grounded_sam asks an LLM the
    vocabulary section that configures the LLM and the tagger, and for source_model
    `model_key` (tasks.source_model.zero_seed_model_key: the model's version or params)."""
    key: dict[str, Any] = {
        "image_sha256": image_sha256,
        "params": params.model_dump(exclude={"skip_existing", "max_frames", "device"}),
        "classes": classes.to_json(),
    }
    if params.backend == "grounded_sam" and params.use_llm and vocabulary.llm:
        key["vocabulary"] = vocabulary.model_dump(exclude={"max_frames"})
    if params.backend == "source_model":
        key["source_model"] = model_key or {}
    return key


def frame_verdict(result: SeedLabel, params: ZeroShotSeedsParams, ignore: int) -> str:
    """'' if the frame's label may be a seed, else why not (one line)."""
    labelled = result.labelled_fraction(ignore)
    if labelled < params.min_labelled_fraction:
        return (
            f"mostly void: {labelled:.1%} labelled < "
            f"min_labelled_fraction {params.min_labelled_fraction:.0%}"
        )
    confidence = result.mean_confidence(ignore)
    if confidence < params.min_mean_confidence:
        return (
            f"low confidence: mean {confidence:.3f} < "
            f"min_mean_confidence {params.min_mean_confidence}"
        )
    return ""


def _remove(url: str) -> None:
    if exists(url):
        fs, path = get_fs(url)
        fs.rm(path)


def _stats(result: SeedLabel, classes: ClassList) -> dict[str, Any]:
    counts = np.bincount(result.label.ravel(), minlength=256)
    return {
        "labelled_fraction": round(result.labelled_fraction(classes.ignore_index), 4),
        "mean_confidence": round(result.mean_confidence(classes.ignore_index), 4),
        "class_pixels": {n: int(counts[i]) for i, n in enumerate(classes.names) if counts[i]},
    }


def zero_shot_seeds(
    images: str,
    classes: str,
    out: str,
    params: ZeroShotSeedsParams | None = None,
    vocabulary: VocabularyParams | None = None,
    stems: list[str] | None = None,
    progress: bool = True,
    model: ModelParams | None = None,
) -> dict[str, Any]:
    """Label frames of `images` with the zero-shot backend; write seed labels under `out`.

    Args:
        images: URL of a folder of frames (STEM.jpg/.png).
        classes: URL of the target classes.json.
        out: URL of the output folder (layout in the module docstring).
        params: the `zero_shot_seeds` section; vocabulary: the `vocabulary` section (tagger
            and LLM settings the grounded_sam backend reuses).
        stems: only these frames (default: all, or `max_frames` evenly spaced).
        model: the `model` section: source_model builds its zero-seed model from it (with
            `params.source_backbone` as backbone when set) unless `params.source_model_dir`.
    Returns:
        the report (also `out/report.json`): used / rejected / skipped frames, seconds.
    """
    params = params or ZeroShotSeedsParams()
    vocabulary = vocabulary or VocabularyParams()
    started = time.perf_counter()
    class_list = load_classes(classes)
    check_models(params, model)
    model_key = None
    if params.backend == "source_model":
        from tasks.source_model import zero_seed_model_key

        model_key = zero_seed_model_key(params, model or ModelParams())
    class_phrases(list(class_list.names), params.names)  # zero_shot_seeds.names: known classes
    frames = list_images(images)
    if stems:
        by_stem = dict(frames)
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise LamflowError(f"zero_shot_seeds: frames {missing[:5]} not found in {images}")
        frames = [(s, by_stem[s]) for s in stems]
    frames = evenly_spaced(frames, params.max_frames)
    if not frames:
        raise LamflowError(f"zero_shot_seeds: no frames (.jpg/.png) in {images}")
    used: list[dict[str, str]] = []
    rejected: list[dict[str, str]] = []
    skipped: list[str] = []
    version = ""
    seeder: ZeroShotSeeder | None = None  # built at the first frame that is not skipped
    for stem, url in tqdm(frames, desc="zero_shot_seeds", unit="frame", disable=not progress):
        data = read_bytes(url)
        key = record_key(sha256_bytes(data), params, vocabulary, class_list, model_key)
        rec_url = join(out, "records", f"{stem}.json")
        if params.skip_existing and exists(rec_url):
            try:
                record = json.loads(read_bytes(rec_url))
            except json.JSONDecodeError:
                record = {}
            names = ("labels", "confidence") if record.get("used") else ("rejected",)
            complete = all(exists(join(out, n, f"{stem}.png")) for n in names)
            if record.get("key") == key and complete:
                skipped.append(stem)
                version = version or str(record.get("version", ""))
                (used if record["used"] else rejected).append(
                    {"stem": stem, **({"reason": record["reason"]} if record.get("reason") else {})}
                )
                continue
        try:
            image = decode_image(data, url)
        except LamflowError as exc:  # bytes that do not decode: a verdict, not a crash
            reason = f"undecodable: {exc}"
            _remove(join(out, "labels", f"{stem}.png"))
            _remove(join(out, "confidence", f"{stem}.png"))
            rejected.append({"stem": stem, "reason": reason})
            record = {"key": key, "stem": stem, "frame": url, "used": False, "reason": reason}
            write_text_atomic(rec_url, json.dumps(record, indent=1))
            log.warning("zero-shot seeds: %s", reason)
            continue
        if seeder is None:
            seeder = build_seeder(params, vocabulary, class_list, model)
        version = seeder.version
        result = seeder.label_frame(image)
        class_list.check_label(result.label)
        reason = frame_verdict(result, params, class_list.ignore_index)
        label_png = encode_png(np.ascontiguousarray(result.label, dtype=np.uint8))
        conf_png = encode_png(np.round(np.clip(result.confidence, 0, 1) * 255).astype(np.uint8))
        if reason:
            write_bytes_atomic(join(out, "rejected", f"{stem}.png"), label_png)
            _remove(join(out, "labels", f"{stem}.png"))
            _remove(join(out, "confidence", f"{stem}.png"))
            rejected.append({"stem": stem, "reason": reason})
        else:
            write_bytes_atomic(join(out, "confidence", f"{stem}.png"), conf_png)
            write_bytes_atomic(join(out, "labels", f"{stem}.png"), label_png)
            _remove(join(out, "rejected", f"{stem}.png"))
            used.append({"stem": stem})
        record = {
            "key": key,
            "stem": stem,
            "frame": url,
            "version": version,
            "used": not reason,
            "reason": reason,
            **_stats(result, class_list),
            "details": result.details,
        }
        write_text_atomic(rec_url, json.dumps(record, indent=1, default=str))
    report = {
        "out": out,
        "backend": params.backend,
        "version": version,
        "frames": len(frames),
        "used": [u["stem"] for u in used],
        "rejected": rejected,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    model_provenance = getattr(seeder, "provenance", None)  # source_model: class map, weights
    if seeder is None and exists(join(out, REPORT)):  # nothing relabelled: keep what it said
        model_provenance = json.loads(read_bytes(join(out, REPORT))).get("model")
    if model_provenance:
        report["model"] = model_provenance
    write_text_atomic(join(out, REPORT), json.dumps(report, indent=2))
    if rejected:
        log.warning(
            "zero-shot seeds: %d of %d frames not used (%s ...); see %s",
            len(rejected),
            len(frames),
            rejected[0]["reason"],
            join(out, REPORT),
        )
    log.info("zero-shot seeds: %d used, %d rejected -> %s", len(used), len(rejected), out)
    return report
