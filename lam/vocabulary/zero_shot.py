"""`clip` / `siglip`: zero-shot scoring of a candidate label list with an image-text model.

The model is a transformers checkpoint in a local directory (config.json, weights, tokenizer
and image-processor files), e.g. a copy of `openai/clip-vit-base-patch32` or
`google/siglip-base-patch16-224` made with `save_pretrained`. Nothing is fetched: the
directory is read with `local_files_only=True`. CLIP scores are a softmax over candidates
(one label wins each view); SigLIP scores are independent sigmoids (several labels can be
present), which suits a multi-label vocabulary better.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lam.errors import LamflowError
from lam.vocabulary.proposals import FrameProposals, frame_views
from lam.zero_shot.model_dir import check_model_dir, projected_embeddings


class ZeroShotTagger:
    """Score `candidates` on each view of a frame with a CLIP-like model.

    Args:
        model_dir: local transformers directory of a CLIP or SigLIP model.
        candidates: label names to score (non-empty, unique).
        kind: 'clip' (softmax over candidates) or 'siglip' (per-label sigmoid).
        views: 'full', 'grid' or 'both'.
        top_k: labels kept per view; min_prob: and only those at or above this probability.
        template: text prompt for a label, '{}' is replaced by the label.
    """

    def __init__(
        self,
        model_dir: str | Path,
        candidates: Sequence[str],
        kind: str = "clip",
        views: str = "both",
        top_k: int = 5,
        min_prob: float = 0.02,
        template: str = "a photo of a {}.",
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        if kind not in ("clip", "siglip"):
            raise ValueError(f"unknown zero-shot kind {kind!r}; known: clip, siglip")
        names = list(dict.fromkeys(c.strip() for c in candidates if c.strip()))
        if not names:
            raise LamflowError(f"{kind} tagger needs a non-empty candidate label list")
        if "{}" not in template:
            raise LamflowError(f"prompt template must contain '{{}}', got {template!r}")
        path = check_model_dir(model_dir, f"{kind} tagger (vocabulary.model_dir)")
        self.kind, self.views, self.top_k, self.min_prob = kind, views, top_k, min_prob
        self.candidates = names
        self.model: Any = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.image_processor: Any = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        padding = "max_length" if kind == "siglip" else True
        texts = [template.format(n) for n in names]
        max_len = min(int(getattr(tokenizer, "model_max_length", 64) or 64), 64)
        with torch.inference_mode():
            tokens = tokenizer(
                texts, padding=padding, truncation=True, max_length=max_len, return_tensors="pt"
            )
            tokens.pop("token_type_ids", None)
            text = projected_embeddings(self.model.get_text_features(**tokens))
        self.text = torch.nn.functional.normalize(text, dim=-1)  # (C, D)
        self.version = f"{kind}:{path.name}:{views}:top{top_k}:{len(names)}labels"

    @torch.inference_mode()
    def scores(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (V, C) probabilities of each candidate in each view."""
        views = [np.ascontiguousarray(v) for v in frame_views(image, self.views)]
        pixels = self.image_processor(images=views, return_tensors="pt")["pixel_values"]
        img = projected_embeddings(self.model.get_image_features(pixel_values=pixels))
        img = torch.nn.functional.normalize(img, dim=-1)
        logits = img @ self.text.T * self.model.logit_scale.exp()
        if self.kind == "siglip":
            return torch.sigmoid(logits + self.model.logit_bias).numpy()
        return logits.softmax(dim=-1).numpy()

    def propose(self, image: np.ndarray) -> FrameProposals:
        """Each view's top-k candidates (at or above min_prob) with their probabilities."""
        out = FrameProposals()
        for row in self.scores(image):
            for idx in np.argsort(-row, kind="stable")[: self.top_k]:
                if row[idx] >= self.min_prob:
                    out.add(self.candidates[int(idx)], float(row[idx]))
        return out


class ClipTagger(ZeroShotTagger):
    """ZeroShotTagger with softmax scoring (registered as `clip`)."""

    def __init__(self, model_dir: str | Path, candidates: Sequence[str], **options) -> None:
        super().__init__(model_dir, candidates, kind="clip", **options)


class SiglipTagger(ZeroShotTagger):
    """ZeroShotTagger with sigmoid scoring (registered as `siglip`)."""

    def __init__(self, model_dir: str | Path, candidates: Sequence[str], **options) -> None:
        super().__init__(model_dir, candidates, kind="siglip", **options)
