"""Synsets: proposed labels clustered by the meaning of their names.

LLM2Labels groups near-duplicate labels ("car", "automobile", "sports car") before using
the vocabulary. Here label names are embedded (lam.vocabulary.text_embedding) and clustered
agglomeratively with average linkage on cosine distance and a distance threshold, so the
number of synsets follows from the data rather than being fixed in advance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lam.vocabulary.filtering import RankedLabel


@dataclass
class Synset:
    """A group of labels meaning the same thing.

    `name` is the best-scored member; `synonyms` the other members, best first; `score` the
    best member score; `occurrences` the most frames any member was seen in; `wnids` the
    members' WordNet ids. `parent` and `hypernyms` are filled by the hierarchy step, with
    `hierarchy_source` saying where they came from ('wordnet', 'llm' or 'none').
    """

    name: str
    synonyms: list[str] = field(default_factory=list)
    score: float = 0.0
    occurrences: int = 0
    wnids: list[str] = field(default_factory=list)
    parent: str | None = None
    hypernyms: list[str] = field(default_factory=list)
    hierarchy_source: str = "none"

    @property
    def members(self) -> list[str]:
        return [self.name, *self.synonyms]


def synsets_from_groups(
    ranked: Sequence[RankedLabel], groups: Sequence[Sequence[str]]
) -> list[Synset]:
    """Build synsets from label groups (each a list of labels of `ranked`), best first."""
    by_label = {r.label: r for r in ranked}
    out = []
    for group in groups:
        rows = sorted((by_label[g] for g in group), key=lambda r: (-r.score, r.label))
        out.append(
            Synset(
                name=rows[0].label,
                synonyms=[r.label for r in rows[1:]],
                score=rows[0].score,
                occurrences=max(r.occurrences for r in rows),
                wnids=list(dict.fromkeys(r.wnid for r in rows if r.wnid)),
            )
        )
    return sorted(out, key=lambda s: (-s.score, s.name))


def cluster_labels(
    ranked: Sequence[RankedLabel], embeddings: np.ndarray, distance_threshold: float = 0.3
) -> list[Synset]:
    """Cluster `ranked` labels into synsets.

    Args:
        ranked: the filtered vocabulary (N labels).
        embeddings: (N, D) unit-length embeddings of the label names, same order.
        distance_threshold: cosine distance (1 - cosine similarity) below which clusters
            merge under average linkage; 0.3 joins 'car'/'automobile' (similarity 0.86) but
            not 'car'/'truck'.
    Returns:
        synsets, best score first.
    """
    if len(ranked) != len(embeddings):
        raise ValueError(f"{len(ranked)} labels but {len(embeddings)} embeddings")
    if not 0.0 < distance_threshold < 2.0:
        raise ValueError(f"distance_threshold must lie in (0, 2), got {distance_threshold}")
    if len(ranked) == 0:
        return []
    if len(ranked) == 1:
        return synsets_from_groups(ranked, [[ranked[0].label]])
    from sklearn.cluster import AgglomerativeClustering

    clusterer = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=distance_threshold
    )
    ids = clusterer.fit_predict(np.asarray(embeddings, dtype=np.float64))
    groups: dict[int, list[str]] = {}
    for row, cid in zip(ranked, ids):
        groups.setdefault(int(cid), []).append(row.label)
    return synsets_from_groups(ranked, list(groups.values()))
