"""Mapping synsets onto a target taxonomy (CamVid 11, Cityscapes 19, ...).

Each synset goes to the target class whose name is most similar to any of the synset's
members (cosine similarity of MiniLM embeddings), or to UNMAPPED if the best similarity is
below a threshold. The result is an explicit table a human can edit in vocabulary.yaml;
edited rows are kept on re-runs (see `merge_manual`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lam.vocabulary.grouping import Synset

UNMAPPED = "unmapped"
# A hypernym d levels up counts with similarity x 0.85**d: 'bicycle-built-for-two' should
# reach 'bicyclist' through its parent 'bicycle' (0.79 * 0.85) before 'car' through its
# grandparent 'vehicle' (0.87 * 0.85**2).
HYPERNYM_DISCOUNT = 0.85


@dataclass
class MappingRow:
    """One synset -> target class decision. `source`: 'embedding', 'llm' or 'manual'."""

    synset: str
    target: str
    similarity: float
    source: str = "embedding"


def map_synsets(
    synsets: Sequence[Synset],
    targets: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
    threshold: float = 0.5,
    target_synonyms: Mapping[str, Sequence[str]] | None = None,
    hypernym_depth: int = 3,
) -> list[MappingRow]:
    """Map each synset to a target class or UNMAPPED.

    Args:
        synsets: the grouped vocabulary.
        targets: target class names (e.g. CamVid's 'sky', 'road', ...).
        embed: texts (N,) -> (N, D) unit-length embeddings.
        threshold: minimum cosine similarity in [-1, 1] to map at all.
        target_synonyms: optional extra names per target class ('car': ['automobile']),
            compared like the class name itself.
        hypernym_depth: how many of a synset's nearest hypernyms ('cab' -> 'car', 'cinema'
            -> 'theater', 'building') are compared too, discounted by HYPERNYM_DISCOUNT per
            level; why: a fine ImageNet label is often far from a coarse target name while
            its WordNet parent is the target itself.
    Returns:
        one MappingRow per synset, same order.
    """
    if not targets:
        return [MappingRow(s.name, UNMAPPED, 0.0) for s in synsets]
    names, owners = [], []
    for t in targets:
        for n in [t, *(target_synonyms or {}).get(t, [])]:
            names.append(n)
            owners.append(t)
    target_vecs = embed(names)  # (T', D)
    rows = []
    for s in synsets:
        hypers = [h for h in s.hypernyms[:hypernym_depth] if h not in s.members]
        weights = np.array(
            [1.0] * len(s.members) + [HYPERNYM_DISCOUNT ** (d + 1) for d in range(len(hypers))]
        )
        sims = (embed([*s.members, *hypers]) @ target_vecs.T) * weights[:, None]  # (M, T')
        best = np.unravel_index(int(np.argmax(sims)), sims.shape)
        sim = float(sims[best])
        target = owners[best[1]] if sim >= threshold else UNMAPPED
        rows.append(MappingRow(s.name, target, round(sim, 4)))
    return rows


def merge_manual(rows: list[MappingRow], previous: Sequence[Mapping[str, object]]) -> None:
    """Keep a human's corrections: rows of a previous vocabulary.yaml with source 'manual'
    override the computed row of the same synset (in place)."""
    manual = {
        str(r["synset"]): str(r["target"])
        for r in previous
        if isinstance(r, Mapping) and r.get("source") == "manual" and "synset" in r
    }
    for row in rows:
        if row.synset in manual:
            row.target, row.source = manual[row.synset], "manual"
