"""`maskclip`: label-free dense CLIP scores, optionally voted inside SAM masks.

MaskCLIP (Zhou et al., ECCV 2022) reads CLIP's image encoder densely. In the last transformer
block the query-key attention is dropped: each patch token x takes the value path instead,
keeping the block's residual and MLP as MaskCLIP's released ViT code does, then the encoder's
final LayerNorm and the image-text projection:

    v = x + W_out(W_v(LN_1(x)));   v = v + MLP(LN_2(v));   f(x) = P(LN_post(v))

Attention mixes every patch with the others (and pools them into the class token); the value
path keeps each patch its own, so f(x) is a per-patch embedding in CLIP's joint space. Each
class is a text embedding: the class name in the 85 templates of `lam.zero_shot.templates`,
averaged. Per-patch softmax
of CLIP's scaled cosine similarity gives class probabilities; upsampled to the frame, they can
be voted inside SAM automatic masks (the label-free scene-understanding recipe: a mask takes
the mean probability vector of its pixels, so object boundaries come from SAM, not from the
16-pixel patch grid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from lam.errors import LamflowError
from lam.zero_shot.model_dir import check_model_dir, projected_embeddings
from lam.zero_shot.result import SeedLabel, probabilities_to_label
from lam.zero_shot.templates import MASKCLIP_TEMPLATES, prompts_for

TextEncoder = Callable[[list[str]], torch.Tensor]  # N sentences -> (N, D) embeddings


def class_text_embeddings(
    encode: TextEncoder,
    class_names: Sequence[Sequence[str]],
    templates: Sequence[str] = MASKCLIP_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit class embeddings: class c = mean over its names x templates, normalised.

    class_names[c] lists the phrases of class c (usually just its name; a pre-refinement
    table may add synonyms such as "pavement" for "sidewalk").
    """
    rows = []
    for c, names in enumerate(class_names):
        if not names:
            raise LamflowError(f"class {c} has no name to prompt CLIP with")
        sentences = [s for name in names for s in prompts_for(name, tuple(templates))]
        emb = F.normalize(encode(sentences).float(), dim=-1)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def dense_class_probabilities(
    patch_features: torch.Tensor,
    text: torch.Tensor,
    logit_scale: float,
    out_size: tuple[int, int],
) -> torch.Tensor:
    """(h, w, D) patch embeddings + (C, D) class embeddings -> (C, H, W) probabilities.

    Cosine similarities are scaled by CLIP's learnt `logit_scale` (exp of the parameter, ~100),
    bilinearly upsampled to `out_size` as logits, then soft-maxed over classes.
    """
    feats = F.normalize(patch_features.float(), dim=-1)
    logits = torch.einsum("hwd,cd->chw", feats, F.normalize(text.float(), dim=-1)) * logit_scale
    logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
    return logits.softmax(0)


def vote_in_masks(probs: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """(C, H, W) probabilities -> the same, each mask's pixels set to the mask's mean vector.

    Masks are applied largest first, so a small mask inside a large one (a sign on a
    building) keeps its own vote. Pixels no mask covers keep their own probabilities.
    """
    out = probs.copy()
    for mask in sorted(masks, key=lambda m: -int(m.sum())):
        if mask.shape != probs.shape[1:]:
            raise ValueError(f"mask is {mask.shape}, probabilities are {probs.shape[1:]}")
        if not mask.any():
            continue
        out[:, mask] = probs[:, mask].mean(1, keepdims=True)
    return out


class ClipDenseEncoder:
    """A transformers `CLIPModel` read densely (MaskCLIP's value-embedding trick).

    Args:
        model_dir: local directory with a CLIP `save_pretrained` layout (config.json with
            model_type "clip", weights, tokenizer and image-processor files).
        short_side: the frame is resized so its short side is this (default: the model's
            training image size), both sides rounded to the patch size; position embeddings
            are interpolated (`interpolate_pos_encoding=True`).
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", short_side: int = 0) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path = check_model_dir(model_dir, "maskclip", ("clip",))
        model: Any = CLIPModel.from_pretrained(path, local_files_only=True)
        self.model: Any = model.to(device).eval()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor: Any = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        vision = self.model.config.vision_config
        self.patch = int(vision.patch_size)
        self.short_side = int(short_side or vision.image_size)
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = device
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self.version = f"clip:{path.name}:s{self.short_side}"

    @torch.inference_mode()
    def encode_text(self, sentences: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return projected_embeddings(self.model.get_text_features(**tokens)).float().cpu()

    def pixel_values(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) normalised; short side `short_side`, sides % patch 0."""
        h, w = image.shape[:2]
        scale = self.short_side / min(h, w)
        size = tuple(max(self.patch, round(d * scale / self.patch) * self.patch) for d in (h, w))
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return ((x - self.mean) / self.std).to(self.device)

    @torch.inference_mode()
    def patch_features(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (h / patch, w / patch, D) MaskCLIP patch embeddings."""
        pixels = self.pixel_values(image)
        vision = self.model.vision_model
        out = vision(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        x = out.hidden_states[-2]  # (1, 1 + h*w, width): the input of the last block
        last = vision.encoder.layers[-1]
        v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x))) + x
        v = v + last.mlp(last.layer_norm2(v))
        feats = self.model.visual_projection(vision.post_layernorm(v))[0, 1:]  # drop the CLS
        gh, gw = pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch
        return feats.reshape(gh, gw, -1).float().cpu()


class MaskClipSeeder:
    """Frame -> seed label with dense CLIP scores, optionally voted inside SAM masks.

    Args:
        class_names: per class id c, the phrases naming it (class c = row c).
        ignore_index: the void id.
        encoder: anything with `encode_text`, `patch_features` and `logit_scale` (a
            `ClipDenseEncoder`; tests pass oracles).
        mask_generator: optional object with `generate(image) -> list of (H, W) bool masks`.
        min_confidence: pixels whose best class probability is below this become void.
    """

    def __init__(
        self,
        class_names: Sequence[Sequence[str]],
        ignore_index: int,
        encoder: Any,
        mask_generator: Any = None,
        min_confidence: float = 0.5,
        templates: Sequence[str] = MASKCLIP_TEMPLATES,
    ) -> None:
        if not class_names:
            raise LamflowError("maskclip needs at least one class")
        self.class_names = [list(n) for n in class_names]
        self.ignore_index = int(ignore_index)
        self.encoder = encoder
        self.mask_generator = mask_generator
        self.min_confidence = float(min_confidence)
        self.text = class_text_embeddings(encoder.encode_text, self.class_names, templates)
        sam = getattr(mask_generator, "version", "none") if mask_generator else "none"
        self.version = (
            f"maskclip:{getattr(encoder, 'version', type(encoder).__name__)}:sam={sam}"
            f":t{len(templates)}:c{self.min_confidence}"
        )

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (C, H, W) float32 class probabilities (after the mask vote)."""
        feats = self.encoder.patch_features(image)
        probs = dense_class_probabilities(
            feats, self.text, float(self.encoder.logit_scale), tuple(image.shape[:2])
        ).numpy()
        if self.mask_generator is not None:
            probs = vote_in_masks(probs, self.mask_generator.generate(image))
        return probs.astype(np.float32)

    def label_frame(self, image: np.ndarray) -> SeedLabel:
        probs = self.probabilities(image)
        ids = list(range(len(self.class_names)))
        label, confidence = probabilities_to_label(
            probs, ids, self.ignore_index, self.min_confidence
        )
        return SeedLabel(label, confidence, {"backend": "maskclip"})


def build_maskclip(
    names: Sequence[str],
    ignore_index: int,
    clip_dir: str = "",
    sam: str = "",
    sam_model_type: str = "vit_b",
    device: str = "cpu",
    short_side: int = 0,
    min_confidence: float = 0.5,
    points_per_side: int = 32,
    names_table: Any = None,
) -> MaskClipSeeder:
    """The seeder from a local CLIP directory, with SAM automatic masks when `sam` is set."""
    from lam.zero_shot.refinement import class_phrases

    if not clip_dir:
        raise LamflowError(
            "maskclip needs a CLIP model: set zero_shot_seeds.clip_dir to a local transformers "
            "CLIPModel directory"
        )
    encoder = ClipDenseEncoder(clip_dir, device, short_side)
    masks = None
    if sam:
        from lam.zero_shot.sam import build_auto_masks

        masks = build_auto_masks(sam, sam_model_type, device, points_per_side)
    return MaskClipSeeder(
        class_phrases(names, names_table), ignore_index, encoder, masks, min_confidence
    )
