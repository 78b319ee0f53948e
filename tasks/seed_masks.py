"""Stage `seed_masks`: turn human prompts on seed frames into seed label PNGs.

For each prompt file `prompts/STEM.json` (schema: lam/prompts/schema.py) the frame
`images/STEM.*` is segmented by the configured backend and written to `out/STEM.png` (class
ids; pixels no prompt reaches are void), with `out/records/STEM.json` holding the frame and
prompt sha256, the backend and params. A frame whose record matches is skipped on re-runs.
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
from lam.prompts import get_segmenter
from lam.prompts.schema import load_prompts
from lam.prompts.segment import PromptSegmenter
from lamflow.params import SeedMasksParams
from lamflow.storage import (
    exists,
    join,
    list_dir,
    list_images,
    read_bytes,
    sha256_bytes,
    write_bytes_atomic,
    write_text_atomic,
)
from tasks.frame_sources import load_classes

log = logging.getLogger(__name__)


def build_segmenter(params: SeedMasksParams) -> PromptSegmenter:
    """The backend named by params.segmenter, configured from params."""
    cls = get_segmenter(params.segmenter)
    if params.segmenter == "sam":
        return cls(
            checkpoint=params.sam_checkpoint or None,
            model_type=params.sam_model_type,
            device=params.device,
        )
    return cls(backbone=params.backbone or None, stride=params.stride, threshold=params.threshold)


def _image_size(data: bytes, name: str) -> tuple[int, int]:
    image = decode_image(data, name)
    return image.shape[0], image.shape[1]


def validate_prompts(
    images: str, prompts: str, classes: ClassList, allow_empty: bool = False
) -> list[str]:
    """Parse every prompt file before any segmentation; returns the stems, in order.

    Raises LamflowError naming the first bad file's frame, region, class and field, or when
    there is no prompt file at all (unless `allow_empty`: a pipeline whose humans have not
    prompted anything yet still runs, writing an empty seed-label folder).
    """
    frames = dict(list_images(images))
    stems = [
        n[: -len(".json")] for n in list_dir(prompts) if n.endswith(".json") and n != "classes.json"
    ]
    if not stems:
        if allow_empty:
            log.warning("no prompt files (STEM.json) in %s: no seed masks to make", prompts)
            return []
        raise LamflowError(f"no prompt files (STEM.json) in {prompts}")
    for stem in stems:
        if stem not in frames:
            raise LamflowError(f"prompt file {stem}.json has no frame {stem}.* in {images}")
        size = _image_size(read_bytes(frames[stem]), frames[stem])
        load_prompts(read_bytes(join(prompts, f"{stem}.json")), classes, stem, size)
    return stems


def seed_masks(
    images: str,
    prompts: str,
    out: str,
    params: SeedMasksParams | None = None,
    progress: bool = True,
    classes: str | None = None,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Segment every prompted seed frame and write its seed label PNG.

    Args:
        images: URL of the folder of frames (STEM.jpg/.png).
        prompts: URL of the folder of prompt files (STEM.json).
        out: URL of the output folder (STEM.png class ids + records/STEM.json).
        params: the `seed_masks` section of params.yaml.
        classes: URL of classes.json; None = `prompts/classes.json`.
        allow_empty: a prompts folder without prompt files is not an error (see
            `validate_prompts`); the output folder is still created.
    Returns:
        a summary: frames written / skipped, backend, seconds, per-frame labelled fraction.
    """
    params = params or SeedMasksParams()
    started = time.perf_counter()
    class_list = load_classes(classes or join(prompts, "classes.json"))
    stems = validate_prompts(images, prompts, class_list, allow_empty)  # fail fast
    if not stems:
        write_text_atomic(join(out, "records", "README.txt"), "no prompt files yet\n")
    frames = dict(list_images(images))
    segmenter: PromptSegmenter | None = None
    written, skipped, coverage = [], [], {}
    for stem in tqdm(stems, desc="seed_masks", unit="frame", disable=not progress):
        image_bytes = read_bytes(frames[stem])
        prompt_bytes = read_bytes(join(prompts, f"{stem}.json"))
        record = {
            "stem": stem,
            "image_sha256": sha256_bytes(image_bytes),
            "prompts_sha256": sha256_bytes(prompt_bytes),
            "segmenter": params.segmenter,
            "params": params.model_dump(exclude={"skip_existing"}),
        }
        rec_url = join(out, "records", f"{stem}.json")
        if params.skip_existing and exists(rec_url) and exists(join(out, f"{stem}.png")):
            try:
                if json.loads(read_bytes(rec_url)).get("key") == record:
                    skipped.append(stem)
                    continue
            except json.JSONDecodeError:
                pass
        image = decode_image(image_bytes, frames[stem])
        frame_prompts = load_prompts(prompt_bytes, class_list, stem, image.shape[:2])
        if segmenter is None:
            segmenter = build_segmenter(params)
        label = segmenter.segment_frame(image, frame_prompts, class_list.ignore_index)
        labelled = float(np.mean(label != class_list.ignore_index))
        write_bytes_atomic(join(out, f"{stem}.png"), encode_png(label))
        write_text_atomic(rec_url, json.dumps({"key": record, "labelled_fraction": labelled}))
        written.append(stem)
        coverage[stem] = round(labelled, 4)
    summary = {
        "out": out,
        "segmenter": params.segmenter,
        "written": written,
        "skipped": skipped,
        "labelled_fraction": coverage,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("seed masks: %d written, %d skipped -> %s", len(written), len(skipped), out)
    return summary
