"""`vlm`: a transformers image-to-text model prompted for a frame's segmentation labels.

As in LLM2Labels, the model is sampled several times (nucleus sampling, low temperature,
repetition penalty) and each answer is split into labels; a label's probability combines the
model's own probabilities of the tokens that spell it (avg / product / min / max, Eq. 3),
read from the raw logits rather than the temperature-sharpened sampling distribution.

Any checkpoint loadable with `AutoModelForImageTextToText` from a local directory works:
BLIP-2 / InstructBLIP / Florence-2 (with their processor files beside the weights), or a
`VisionEncoderDecoderModel` (image processor + tokenizer files; the prompt becomes the
decoder prefix). Nothing is fetched (`local_files_only=True`).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lam.vocabulary.filtering import combine
from lam.vocabulary.proposals import FrameProposals
from lam.zero_shot.model_dir import check_model_dir

DEFAULT_PROMPT = (
    "List every object and region visible in this image that a semantic segmentation "
    "dataset would label, as short comma-separated nouns:"
)
_SEPARATORS = re.compile(r"[,;\n]|\band\b|\.\s")
_LEADING_JUNK = re.compile(r"^[\s\-\*\u2022\d\.\)\(:]+")
_LABEL_OK = re.compile(r"^[a-z][a-z \-']{0,39}$")


def split_labels(text: str) -> list[tuple[str, int, int]]:
    """Labels in a generated answer: [(normalised label, start, end char offsets), ...].

    Splits on commas, semicolons, newlines, sentence ends and 'and'; strips bullets and
    numbering; keeps lower-case labels of letters, spaces, hyphens, at most 40 characters.
    """
    out, start = [], 0
    for match in [*_SEPARATORS.finditer(text), None]:
        end = match.start() if match else len(text)
        raw = text[start:end]
        junk = _LEADING_JUNK.match(raw)
        offset = junk.end() if junk else 0
        core = raw[offset:].rstrip().rstrip(".:!?\"'").rstrip()  # span ends at the last letter
        label = re.sub(r"\s+", " ", core).lower()
        if _LABEL_OK.match(label):
            out.append((label, start + offset, start + offset + len(core)))
        start = match.end() if match else len(text)
    return out


class VlmTagger:
    """Sample label lists from an image-to-text model.

    Args:
        model_dir: local transformers directory.
        prompt: instruction asking for labels (DEFAULT_PROMPT).
        samples: answers sampled per frame.
        top_p, temperature, repetition_penalty: sampling settings (0.9, 0.3, 1.5).
        max_new_tokens: answer length cap.
        token_combine: how token probabilities become a label probability (COMBINERS).
        seed: sampling seed; each frame's generator is seeded from it and the frame's bytes,
            so results do not depend on frame order.
    """

    def __init__(
        self,
        model_dir: str | Path,
        prompt: str = DEFAULT_PROMPT,
        samples: int = 5,
        top_p: float = 0.9,
        temperature: float = 0.3,
        repetition_penalty: float = 1.5,
        max_new_tokens: int = 48,
        token_combine: str = "product",
        seed: int = 0,
    ) -> None:
        from transformers import AutoModelForImageTextToText

        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        combine([0.5], token_combine)  # validates the combiner name
        path = check_model_dir(model_dir, "vlm tagger (vocabulary.model_dir)")
        # Auto classes resolve at run time; typed Any so generate()'s kwargs are not checked
        # against the mixin's overloads.
        self.model: Any = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        self.model.eval()
        self.encoder_decoder = self.model.config.model_type == "vision-encoder-decoder"
        if self.encoder_decoder:
            from transformers import AutoImageProcessor, AutoTokenizer

            self.image_processor: Any = AutoImageProcessor.from_pretrained(
                path, local_files_only=True
            )
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.processor: Any = None
        else:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.tokenizer = self.processor.tokenizer
        self.prompt, self.samples, self.max_new_tokens = prompt, samples, max_new_tokens
        self.top_p, self.temperature, self.repetition_penalty = (
            top_p,
            temperature,
            repetition_penalty,
        )
        self.token_combine, self.seed = token_combine, seed
        self.version = f"vlm:{path.name}:s{samples}:p{top_p}:t{temperature}:r{repetition_penalty}"

    def _inputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return dict(self.processor(images=image, text=self.prompt, return_tensors="pt"))
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        prefix = self.tokenizer(self.prompt, return_tensors="pt")["input_ids"]
        start = self.model.config.decoder_start_token_id
        if start is not None and (prefix.shape[1] == 0 or int(prefix[0, 0]) != start):
            prefix = torch.cat([torch.tensor([[start]]), prefix], dim=1)
        return {"pixel_values": pixels, "decoder_input_ids": prefix}

    @torch.inference_mode()
    def answers(self, image: np.ndarray) -> list[tuple[list[int], list[float]]]:
        """(H, W, 3) uint8 RGB -> one (generated token ids, their probabilities) per sample."""
        torch.manual_seed(self.seed ^ zlib.crc32(image.tobytes()))
        out = self.model.generate(
            **self._inputs(image),
            do_sample=True,
            top_p=self.top_p,
            temperature=self.temperature,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=self.samples,
            return_dict_in_generate=True,
            output_logits=True,
        )
        logprobs = self.model.compute_transition_scores(
            out.sequences, out.logits, normalize_logits=True
        )  # (samples, T) log-probabilities under the raw logits
        generated = out.sequences[:, -logprobs.shape[1] :]
        return [(ids.tolist(), lp.exp().tolist()) for ids, lp in zip(generated, logprobs)]

    def parse(self, ids: list[int], probs: list[float]) -> dict[str, float]:
        """One answer's labels -> probability (token probabilities combined per label)."""
        # Decode growing prefixes, not single tokens: sentencepiece drops a token's leading
        # space when it is decoded alone, which would glue words together.
        special = set(self.tokenizer.all_special_ids)
        text = ""
        owner: list[int] = []  # owner[c] = index of the token that produced character c
        kept: list[int] = []
        for i, tok in enumerate(ids):
            if tok in special:
                continue
            kept.append(tok)
            decoded = self.tokenizer.decode(kept, skip_special_tokens=True)
            if not decoded.startswith(text):  # a merge rewrote earlier text; re-own it
                text, owner = "", []
            owner += [i] * (len(decoded) - len(text))
            text = decoded
        labels: dict[str, float] = {}
        for label, start, end in split_labels(text):
            tokens = sorted({owner[c] for c in range(start, end)})
            if not tokens:
                continue
            p = combine([probs[t] for t in tokens], self.token_combine)
            labels[label] = max(p, labels.get(label, 0.0))
        return labels

    def propose(self, image: np.ndarray) -> FrameProposals:
        """Labels of every sampled answer, one probability per answer that named them."""
        out = FrameProposals()
        for ids, probs in self.answers(image):
            for label, p in self.parse(ids, probs).items():
                out.add(label, p)
        return out
