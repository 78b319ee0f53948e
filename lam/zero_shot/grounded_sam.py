"""`grounded_sam`: training-free zero-shot seed labels with LLM refinement.

The pipeline of Huang, Iizuka and Fukui (BMVC 2024), per frame:
1. recognition models turn the frame into text: tags (a vocabulary tagger) and a caption;
2. an LLM reads them and says which target classes are present (`refinement.presence_prompt`);
   the classes' names were pre-refined once into detector phrases (`refinement.refine_phrases`);
3. an open-set detector finds boxes for those phrases (`detectors`), SAM turns each box plus
   its top points into a mask (`sam`); post-refinement maps each phrase back to its class, and
   overlapping masks are resolved by detection score (`result.paint_masks`).

Every model is optional except the detector and SAM: no tagger/captioner means no text for
the LLM; no LLM means every class is queried under its own name (or the manual `names` table).
Confidence of a pixel = the score of the detection whose mask won it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.zero_shot.refinement import (
    PhraseTable,
    class_phrases,
    parse_presence,
    presence_prompt,
    refine_phrases,
)
from lam.zero_shot.result import ScoredMask, SeedLabel, paint_masks


class GroundedSamSeeder:
    """Frame -> seed label through tags/caption -> LLM -> detector -> SAM -> refinement.

    Args:
        names: target class names, class id = position.
        ignore_index: the void id.
        detector: `detectors.Detector` (detect(image, phrases) -> detections).
        masker: `sam.BoxPointMasker` (masks(image, boxes, points) -> [(mask, score)]).
        table: detector phrases per class and their inverse (`refinement.PhraseTable`).
        tagger: optional vocabulary tagger (propose(image) -> FrameProposals).
        captioner: optional object with caption(image) -> str.
        llm: optional `lam.vocabulary.llm.LLM` for the presence step.
        tags_top_k: tags passed to the LLM (most probable first).
        min_score: detections below this score are not painted.
    """

    def __init__(
        self,
        names: Sequence[str],
        ignore_index: int,
        detector: Any,
        masker: Any,
        table: PhraseTable,
        tagger: Any = None,
        captioner: Any = None,
        llm: Any = None,
        tags_top_k: int = 10,
        min_score: float = 0.0,
        phrase_source: str = "default",
    ) -> None:
        if not names:
            raise LamflowError("grounded_sam needs at least one class")
        self.names = list(names)
        self.ignore_index = int(ignore_index)
        self.detector, self.masker, self.table = detector, masker, table
        self.tagger, self.captioner, self.llm = tagger, captioner, llm
        self.tags_top_k, self.min_score = int(tags_top_k), float(min_score)
        self.phrase_source = phrase_source
        parts = [
            "grounded_sam",
            getattr(detector, "version", type(detector).__name__),
            getattr(masker, "version", type(masker).__name__),
            f"tagger={getattr(tagger, 'version', 'none') if tagger else 'none'}",
            f"llm={getattr(llm, 'version', 'none') if llm else 'none'}",
            f"caption={getattr(captioner, 'version', 'none') if captioner else 'none'}",
            f"phrases={phrase_source}",
        ]
        self.version = ":".join(parts)

    def tags(self, image: np.ndarray) -> list[str]:
        if self.tagger is None:
            return []
        labels = self.tagger.propose(image).labels
        ranked = sorted(labels, key=lambda k: -float(np.mean(labels[k])))
        return ranked[: self.tags_top_k]

    def present_classes(self, tags: list[str], caption: str) -> tuple[list[int], str]:
        """(class ids to query, source): the LLM's answer, or every class."""
        everything = list(range(len(self.names)))
        if self.llm is None:
            return everything, "all classes (no llm)"
        parsed = parse_presence(
            self.llm.complete(presence_prompt(self.names, tags, caption)), self.names
        )
        if parsed is None:
            return everything, "all classes (llm answer unusable)"
        return [self.names.index(n) for n in parsed], "llm"

    def label_frame(self, image: np.ndarray) -> SeedLabel:
        tags = self.tags(image)
        caption = self.captioner.caption(image) if self.captioner is not None else ""
        present, source = self.present_classes(tags, caption)
        phrases = self.table.queries(present)
        detections = [d for d in self.detector.detect(image, phrases) if d.score >= self.min_score]
        masks = self.masker.masks(
            image, [d.box for d in detections], [d.points for d in detections]
        )
        scored, rows = [], []
        for det, (mask, sam_score) in zip(detections, masks):
            cid = self.table.class_of(det.phrase)
            rows.append(
                {
                    **det.as_dict(),
                    "class": None if cid is None else self.names[cid],
                    "sam_score": round(float(sam_score), 4),
                    "pixels": int(mask.sum()),
                }
            )
            if cid is not None and mask.any():
                scored.append(ScoredMask(mask, cid, det.score))
        label, confidence = paint_masks(scored, tuple(image.shape[:2]), self.ignore_index)
        details = {
            "backend": "grounded_sam",
            "tags": tags,
            "caption": caption,
            "present": [self.names[c] for c in present],
            "present_source": source,
            "phrases": phrases,
            "phrase_source": self.phrase_source,
            "detections": rows,
        }
        return SeedLabel(label, confidence, details)


class VlmCaptioner:
    """A one-sentence caption from an image-to-text model (the vocabulary's `vlm` backend)."""

    def __init__(self, model_dir: str, prompt: str = "Describe the image in one sentence.") -> None:
        from lam.vocabulary.vlm_tagger import VlmTagger

        self.vlm = VlmTagger(
            model_dir, prompt=prompt, samples=1, temperature=0.01, max_new_tokens=40
        )
        self.version = f"caption:{self.vlm.version}"

    def caption(self, image: np.ndarray) -> str:
        ids, _ = self.vlm.answers(image)[0]
        return str(self.vlm.tokenizer.decode(ids, skip_special_tokens=True)).strip()


def build_grounded_sam(
    names: Sequence[str],
    ignore_index: int,
    detector_dir: str = "",
    sam: str = "",
    sam_model_type: str = "vit_b",
    device: str = "cpu",
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    top_points: int = 3,
    nms_iou: float = 0.5,
    tagger: Any = None,
    captioner: Any = None,
    llm: Any = None,
    names_table: Mapping[str, Sequence[str]] | None = None,
    embed: Any = None,
) -> GroundedSamSeeder:
    """The seeder from local model directories (detector_dir, sam) and optional text models."""
    from lam.zero_shot.detectors import build_detector
    from lam.zero_shot.sam import build_box_masker

    if not detector_dir:
        raise LamflowError(
            "grounded_sam needs a detector: set zero_shot_seeds.detector_dir to a local "
            "Grounding DINO or OWLv2 directory"
        )
    if not sam:
        raise LamflowError(
            "grounded_sam needs SAM: set zero_shot_seeds.sam to a segment-anything .pth file "
            "or a transformers SamModel directory"
        )
    detector = build_detector(
        detector_dir,
        device=device,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        top_points=top_points,
        nms_iou=nms_iou,
    )
    masker = build_box_masker(sam, sam_model_type, device)
    phrases, source = refine_phrases(
        names, class_phrases(names, names_table), llm, manual=list(names_table or {})
    )
    table = PhraseTable(names, phrases, embed)
    return GroundedSamSeeder(
        names,
        ignore_index,
        detector,
        masker,
        table,
        tagger,
        captioner,
        llm,
        phrase_source=source,
    )
