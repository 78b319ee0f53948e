"""Class names in and out of an open-set detector: the LLM pre- and post-refinement.

Following the LLM-refinement paper (Huang, Iizuka, Fukui, BMVC 2024):
* **presence**: from a frame's tags and caption, an LLM says which target classes it shows,
  so the detector is only asked for those;
* **pre-refinement**: dataset class names are often not what a detector trained on web
  captions knows ("sidewalk" -> "pavement", "bicyclist" -> "person riding a bicycle"). An
  LLM rewrites each into a few detector-friendly phrases, once per class list;
* **post-refinement**: each detected phrase goes back to its target class. The phrases are
  ours (the detector scores exactly the phrases it was given), so this is the inverse of the
  pre-refinement table; a phrase outside it (a detector that returns its own wording) is
  mapped by MiniLM similarity, the embedding mapping of `lam.vocabulary.taxonomy`.

With no LLM configured: every class is queried, under `class_phrases` (its name, or the
manual `names` table of params). LLM answers are parsed defensively: an answer that does not
fit falls back to that default and is reported, never trusted half-way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.vocabulary.llm_parse import extract_json

log = logging.getLogger(__name__)


def class_phrases(
    names: Sequence[str], overrides: Mapping[str, Sequence[str]] | None = None
) -> list[list[str]]:
    """Per class, the phrases to prompt with: `overrides[name]` if given, else the name
    with underscores as spaces ("traffic_light" -> "traffic light")."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise LamflowError(
            f"zero_shot_seeds.names: unknown classes {unknown}; classes: {list(names)}"
        )
    return [
        [str(p).strip() for p in overrides.get(n) or [n.replace("_", " ")] if str(p).strip()]
        for n in names
    ]


def pre_refinement_prompt(names: Sequence[str], domain: str = "street scenes") -> str:
    """The LLM prompt that rewrites dataset class names into detector phrases (JSON answer)."""
    listing = "\n".join(f"- {n}" for n in names)
    return (
        "You prepare the class names of a semantic segmentation dataset for an open-set "
        f"object detector (such as Grounding DINO) that was trained on web image captions. "
        f"The images are {domain}. Dataset classes:\n{listing}\n"
        "For each class give one to three short, common English noun phrases that such a "
        "detector understands and that cover what the class means in these images, for "
        'example "sidewalk" -> ["pavement", "sidewalk"]. Do not use a phrase for two classes.\n'
        'Answer with JSON only: {"class name": ["phrase", ...], ...}, one key per class.'
    )


def parse_pre_refinement(text: str, names: Sequence[str]) -> dict[str, list[str]] | None:
    """The LLM's {class: [phrases]} restricted to known classes, or None if unusable.

    A class the answer leaves out keeps its own name; a phrase given for two classes stays
    with the first (post-refinement must map every phrase to one class).
    """
    data = extract_json(text)
    if not isinstance(data, dict):
        return None
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    by_norm = {_norm(k): v for k, v in data.items()}
    for name in names:
        value = by_norm.get(_norm(name))
        phrases = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        kept = []
        for p in phrases:
            p = str(p).strip().lower()
            if p and p not in seen and len(p) <= 60:
                kept.append(p)
                seen.add(p)
        if kept:
            out[name] = kept
    return out or None


def presence_prompt(names: Sequence[str], tags: Sequence[str], caption: str) -> str:
    """The LLM prompt that picks the target classes a frame shows (JSON answer)."""
    return (
        "An image recognition model describes a street-scene image.\n"
        f"Tags: {', '.join(tags) if tags else '(none)'}\n"
        f"Caption: {caption or '(none)'}\n"
        f"Target classes: {', '.join(names)}\n"
        "Which target classes are visible in the image? Include classes that are very likely "
        "present in such a scene even if no tag names them.\n"
        'Answer with JSON only: {"present": ["class name", ...]}.'
    )


def parse_presence(text: str, names: Sequence[str]) -> list[str] | None:
    """Known class names from the LLM's {"present": [...]}, in class order (an empty list
    is an answer: nothing present), or None if the answer does not have that form."""
    data = extract_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("present"), list):
        return None
    said = {_norm(x) for x in data["present"]}
    return [n for n in names if _norm(n) in said]


def _norm(name: object) -> str:
    """'Traffic_Light ' -> 'traffic light': how names are compared with an LLM's answer."""
    return " ".join(str(name).replace("_", " ").lower().split())


class PhraseTable:
    """Detector phrases per class, and the inverse map (post-refinement).

    Args:
        names: target class names; class id = position.
        phrases: per class the phrases it is queried with (from `class_phrases` or the LLM).
        embed: optional texts -> (N, D) unit embeddings, for phrases outside the table.
        threshold: least cosine similarity for the embedding fallback.
    """

    def __init__(
        self,
        names: Sequence[str],
        phrases: Sequence[Sequence[str]],
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
        threshold: float = 0.5,
    ) -> None:
        if len(phrases) != len(names):
            raise ValueError(f"{len(phrases)} phrase lists for {len(names)} classes")
        self.names = list(names)
        self.phrases = [list(p) for p in phrases]
        self.by_phrase: dict[str, int] = {}
        for cid, plist in enumerate(self.phrases):
            for p in plist:
                self.by_phrase.setdefault(p.lower(), cid)
        self.embed, self.threshold = embed, float(threshold)

    def queries(self, class_ids: Sequence[int]) -> list[str]:
        """The unique phrases of `class_ids`, in class then phrase order."""
        out: list[str] = []
        for cid in class_ids:
            for p in self.phrases[cid]:
                if self.by_phrase.get(p.lower()) == cid and p not in out:
                    out.append(p)
        return out

    def class_of(self, phrase: str) -> int | None:
        """Post-refinement: the class id of a detected phrase, or None if it maps to none."""
        key = phrase.strip().lower()
        if key in self.by_phrase:
            return self.by_phrase[key]
        if self.embed is None or not self.by_phrase:
            return None
        known = list(self.by_phrase)
        vectors = self.embed([key, *known])
        sims = vectors[1:] @ vectors[0]
        best = int(np.argmax(sims))
        return self.by_phrase[known[best]] if float(sims[best]) >= self.threshold else None

    def as_dict(self) -> dict[str, Any]:
        return {n: p for n, p in zip(self.names, self.phrases)}


def refine_phrases(
    names: Sequence[str],
    default: Sequence[Sequence[str]],
    llm: Any = None,
    manual: Sequence[str] = (),
) -> tuple[list[list[str]], str]:
    """Per class phrases: the LLM's pre-refinement if an LLM is given and answers usefully,
    else `default`. Classes in `manual` (a person wrote their phrases) keep `default` and
    are not asked about. Returns (phrases, source): source is 'llm', 'default' or
    'default (llm answer unusable)', plus a note naming any class left without a phrase of
    its own (an earlier class took them all)."""
    asked = [n for n in names if n not in set(manual)]
    if llm is None or not asked:
        phrases, source = [list(p) for p in default], "default"
    else:
        answer = llm.complete(pre_refinement_prompt(asked))
        parsed = parse_pre_refinement(answer, asked)
        if parsed is None:
            log.warning("LLM pre-refinement answer unusable, class names kept: %.200s", answer)
            phrases, source = [list(p) for p in default], "default (llm answer unusable)"
        else:
            phrases = [parsed.get(n) or list(d) for n, d in zip(names, default)]
            source = "llm"
    seen: set[str] = set()
    starved = []
    for name, plist in zip(names, phrases):
        own = [p for p in plist if p.lower() not in seen]
        if not own:
            starved.append(name)
            log.warning("class %r has no detector phrase of its own: %s", name, plist)
        seen.update(p.lower() for p in plist)
    if starved:
        source += f"; no phrase of their own (never queried): {', '.join(starved)}"
    return phrases, source
