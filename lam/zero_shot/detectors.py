"""Open-set detectors for zero-shot seeds: phrases -> scored boxes, plus points inside them.

Both transformers detectors are read the same way, straight from the model outputs:
* every query (OWLv2: every image patch; Grounding DINO: every decoder query) predicts a box
  and a score per phrase;
* a query goes to its best phrase; queries at or above `box_threshold` are candidates;
* per phrase, non-maximum suppression keeps the detections;
* each detection's points are the centres of the `top_points` best candidates of its phrase
  inside its box. These are the "top points by detector score" the LLM-refinement paper adds
  to SAM's box prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torchvision.ops import nms

from lam.errors import LamflowError
from lam.zero_shot.model_dir import check_model_dir


@dataclass
class Detection:
    """phrase: the query it answers; box: (4,) XYXY pixels; score in [0, 1];
    points: (n, 2) XY pixels, the best candidates' centres inside the box (best first)."""

    phrase: str
    box: np.ndarray
    score: float
    points: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {
            "phrase": self.phrase,
            "box": [round(float(v), 1) for v in self.box],
            "score": round(self.score, 4),
            "points": [[round(float(x), 1), round(float(y), 1)] for x, y in self.points],
        }


class Detector(Protocol):
    version: str

    def detect(self, image: np.ndarray, phrases: Sequence[str]) -> list[Detection]:
        """(H, W, 3) uint8 RGB + phrases -> detections (phrase is one of `phrases`)."""
        ...


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    phrases: Sequence[str],
    box_threshold: float,
    nms_iou: float = 0.5,
    top_points: int = 3,
    max_per_phrase: int = 20,
) -> list[Detection]:
    """Candidates -> detections.

    Args:
        boxes: (N, 4) XYXY pixel boxes of N queries.
        scores: (N, P) score of each query for each of the P phrases, in [0, 1].
        box_threshold: least score of a query's best phrase for it to count.
        nms_iou: IoU above which a lower-scored box of the same phrase is dropped.
        top_points: points per detection (0 = box only).
    Returns: detections, best score first.
    """
    if scores.ndim != 2 or scores.shape[1] != len(phrases) or len(boxes) != len(scores):
        raise ValueError(f"scores {scores.shape} do not fit {len(boxes)} boxes x {len(phrases)}")
    if not len(phrases) or not len(boxes):
        return []
    best = scores.argmax(1)
    best_score = scores.max(1)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    out: list[Detection] = []
    for p, phrase in enumerate(phrases):
        idx = np.flatnonzero((best == p) & (best_score >= box_threshold))
        if not len(idx):
            continue
        keep = nms(
            torch.as_tensor(boxes[idx], dtype=torch.float32),
            torch.as_tensor(best_score[idx], dtype=torch.float32),
            nms_iou,
        ).numpy()[:max_per_phrase]
        by_score = idx[np.argsort(-best_score[idx], kind="stable")]
        for k in idx[keep]:
            x0, y0, x1, y1 = boxes[k]
            inside = [
                j for j in by_score if x0 <= centres[j, 0] <= x1 and y0 <= centres[j, 1] <= y1
            ][:top_points]
            out.append(
                Detection(
                    phrase,
                    boxes[k].astype(np.float32),
                    float(best_score[k]),
                    centres[inside].astype(np.float32).reshape(-1, 2),
                )
            )
    return sorted(out, key=lambda d: -d.score)


def _cxcywh_to_xyxy(boxes: torch.Tensor, scale_xy: tuple[float, float], size_hw) -> np.ndarray:
    """(N, 4) normalised cx, cy, w, h -> (N, 4) XYXY pixels, clipped to the frame."""
    cx, cy, w, h = boxes.float().unbind(-1)
    sx, sy = scale_xy
    xyxy = torch.stack(
        [(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], -1
    )
    hh, ww = size_hw
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, ww - 1)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, hh - 1)
    return xyxy.numpy()


class _HFDetector:
    def __init__(
        self,
        path: Path,
        device: str,
        box_threshold: float,
        text_threshold: float,
        top_points: int,
        nms_iou: float,
    ) -> None:
        self.path, self.device = path, device
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.top_points, self.nms_iou = int(top_points), float(nms_iou)

    def _select(self, boxes: np.ndarray, scores: np.ndarray, phrases: Sequence[str]):
        return select_detections(
            boxes, scores, phrases, self.box_threshold, self.nms_iou, self.top_points
        )


class Owlv2Detector(_HFDetector):
    """`Owlv2ForObjectDetection` (or OWL-ViT) from a local directory.

    Each image patch predicts a box and a logit per text query; OWLv2's processor pads the
    frame to a square at the bottom/right, so boxes are relative to max(H, W).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        top_points: int = 3,
        nms_iou: float = 0.5,
    ) -> None:
        from transformers import AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

        path = check_model_dir(model_dir, "owlv2 detector", ("owlv2", "owlvit"))
        super().__init__(path, device, box_threshold, text_threshold, top_points, nms_iou)
        cls = Owlv2ForObjectDetection if _model_type(path) == "owlv2" else OwlViTForObjectDetection
        model: Any = cls.from_pretrained(path, local_files_only=True)
        self.model: Any = model.to(device).eval()
        self.processor: Any = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.pads_to_square = _model_type(path) == "owlv2"
        self.version = f"{_model_type(path)}:{path.name}:b{self.box_threshold}"

    @torch.inference_mode()
    def detect(self, image: np.ndarray, phrases: Sequence[str]) -> list[Detection]:
        if not phrases:
            return []
        inputs = self.processor(
            text=[list(phrases)], images=np.array(image), return_tensors="pt"
        ).to(self.device)
        out = self.model(**inputs)
        scores = out.logits[0].sigmoid().float().cpu().numpy()  # (patches, P)
        h, w = image.shape[:2]
        scale = (float(max(h, w)),) * 2 if self.pads_to_square else (float(w), float(h))
        boxes = _cxcywh_to_xyxy(out.pred_boxes[0].cpu(), scale, (h, w))
        return self._select(boxes, scores, phrases)


class GroundingDinoDetector(_HFDetector):
    """`GroundingDinoForObjectDetection` from a local directory.

    The phrases become one caption "p1. p2. p3." as Grounding DINO expects; each decoder query
    scores every caption token, and a phrase's score is the best score over its tokens
    (found from the tokenizer's character offsets). A query counts when its best token is at
    or above `box_threshold` and its best phrase at or above `text_threshold`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        top_points: int = 3,
        nms_iou: float = 0.5,
    ) -> None:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        path = check_model_dir(model_dir, "grounding-dino detector", ("grounding-dino",))
        super().__init__(path, device, box_threshold, text_threshold, top_points, nms_iou)
        model: Any = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True)
        self.model: Any = model.to(device).eval()
        self.processor: Any = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.max_text_len = int(getattr(model.config, "max_text_len", 256))
        self.version = f"grounding-dino:{path.name}:b{self.box_threshold}:t{self.text_threshold}"

    def token_phrases(self, caption: str, phrases: Sequence[str]) -> tuple[list[int], Any]:
        """Per caption token, the index of the phrase it belongs to (-1: none), and the ids."""
        enc = self.processor.tokenizer(caption, return_offsets_mapping=True)
        spans, start = [], 0
        for p in phrases:
            s = caption.index(p.lower(), start)
            spans.append((s, s + len(p)))
            start = s + len(p)
        owner = []
        for a, b in enc["offset_mapping"]:
            hit = [i for i, (s, e) in enumerate(spans) if b > a and a >= s and b <= e]
            owner.append(hit[0] if hit else -1)
        return owner, enc["input_ids"]

    def captions(self, phrases: Sequence[str]) -> list[list[int]]:
        """Phrase indices grouped into captions that fit the model's `max_text_len` tokens.

        Grounded-SAM splits long class lists the same way: a caption past the limit would be
        cut (the text encoder has that many positions), losing the last phrases.
        """
        limit = self.max_text_len
        groups: list[list[int]] = []
        for i, p in enumerate(phrases):
            trial = (groups[-1] if groups else []) + [i]
            caption = " ".join(f"{phrases[k]}." for k in trial)
            if len(self.processor.tokenizer(caption)["input_ids"]) <= limit:
                if groups:
                    groups[-1] = trial
                else:
                    groups.append(trial)
                continue
            if len(self.processor.tokenizer(f"{p}.")["input_ids"]) > limit:
                raise LamflowError(
                    f"grounding-dino: phrase {p[:60]!r} alone exceeds max_text_len {limit} tokens"
                )
            groups.append([i])
        return groups

    def _scores(self, image: np.ndarray, phrases: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One caption: ((Q, 4) XYXY boxes, (Q, len(phrases)) thresholded phrase scores)."""
        caption = " ".join(f"{p}." for p in phrases)
        owner, ids = self.token_phrases(caption, phrases)
        inputs = self.processor(images=np.array(image), text=caption, return_tensors="pt")
        if inputs["input_ids"][0].tolist() != list(ids):
            raise LamflowError("grounding-dino: processor and tokenizer disagree on the caption")
        out = self.model(**inputs.to(self.device))
        probs = out.logits[0].sigmoid().float().cpu().numpy()[:, : len(owner)]  # (Q, tokens)
        owner_arr = np.asarray(owner)
        scores = np.zeros((probs.shape[0], len(phrases)), np.float32)
        for p in range(len(phrases)):
            cols = np.flatnonzero(owner_arr == p)
            if len(cols):
                scores[:, p] = probs[:, cols].max(1)
        scores[probs.max(1) < self.box_threshold] = 0.0
        scores[scores < self.text_threshold] = 0.0
        h, w = image.shape[:2]
        boxes = _cxcywh_to_xyxy(out.pred_boxes[0].cpu(), (float(w), float(h)), (h, w))
        return boxes, scores

    @torch.inference_mode()
    def detect(self, image: np.ndarray, phrases: Sequence[str]) -> list[Detection]:
        if not phrases:
            return []
        phrases = [p.lower().strip() for p in phrases]  # Grounding DINO's captions are lowercase
        all_boxes, all_scores = [], []
        for group in self.captions(phrases):
            boxes, scores = self._scores(image, [phrases[k] for k in group])
            full = np.zeros((len(boxes), len(phrases)), np.float32)
            full[:, group] = scores
            all_boxes.append(boxes)
            all_scores.append(full)
        # select_detections thresholds the phrase score; box/text thresholds applied above.
        return select_detections(
            np.concatenate(all_boxes),
            np.concatenate(all_scores),
            phrases,
            max(self.text_threshold, 1e-6),
            self.nms_iou,
            self.top_points,
        )


def _model_type(path: Path) -> str:
    import json

    return str(json.loads((path / "config.json").read_text()).get("model_type", ""))


def build_detector(model_dir: str, **kwargs: Any) -> Detector:
    """The detector class the directory's config names (grounding-dino, owlv2, owlvit)."""
    path = check_model_dir(model_dir, "detector", ("grounding-dino", "owlv2", "owlvit"))
    if _model_type(path) == "grounding-dino":
        return GroundingDinoDetector(path, **kwargs)
    return Owlv2Detector(path, **kwargs)
