"""Taxonomy transfer with no seeds: a source network's classes onto target classes, by name.

A network pretrained on Cityscapes (19 classes) or PASCAL VOC (21) predicts its own classes;
the fleet labels a target taxonomy (a classes.json). With no labelled frame at all, the map
from source to target classes is proposed from the names, with the vocabulary stage's own
matching (`lam.vocabulary.taxonomy.map_synsets`: MiniLM similarity of each source class's
names and discounted broader names to the target names). Each source class becomes a
`Synset` whose synonyms and hypernyms come from lam.source_taxonomies (what the class means,
per its dataset's definitions) and, where installed, WordNet. The result is a list of
`MappingRow`s (synset = the source class name) that a person can correct in
vocabulary.yaml's `source_mapping` section; rows marked `source: manual` win on re-runs.
Unmapped source classes get an all-zero column in `mapping_matrix`: their pixels vote for
no target class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.source_taxonomies import (
    CATCH_ALL,
    CITYSCAPES_CLASSES,
    PASCAL_VOC_CLASSES,
    SOURCE_MEANINGS,
    SOURCE_TAXONOMIES,
    SourceMeaning,
)
from lam.vocabulary.grouping import Synset
from lam.vocabulary.hierarchy import add_wordnet_hypernyms
from lam.vocabulary.taxonomy import UNMAPPED, MappingRow, map_synsets, merge_manual
from lam.vocabulary.wordnet import WordNetNouns

__all__ = [
    "CITYSCAPES_CLASSES",
    "DEFAULT_THRESHOLD",
    "PASCAL_VOC_CLASSES",
    "SOURCE_KEY",
    "SOURCE_TAXONOMIES",
    "SourceMeaning",
    "mapping_matrix",
    "meanings_for",
    "propose_source_mapping",
    "read_source_mapping",
    "source_synsets",
    "write_source_mapping",
]

log = logging.getLogger(__name__)
# Minimum similarity to map at all. Higher than the vocabulary stage's 0.5 for tagger labels:
# a source class is a whole category, and at 0.5 MiniLM's near misses get through ('terrain'
# -> road 0.51, 'aeroplane'/'plane' -> sky 0.54, 'boat' -> car through 'vehicle' 0.53).
# Measured in docs: Cityscapes -> CamVid agrees with the hand map on 18 of 19 classes.
DEFAULT_THRESHOLD = 0.55
SOURCE_KEY = "source_mapping"  # vocabulary.yaml's top-level key for these rows
CATCH_ALL_SOURCE = "catch-all"  # MappingRow.source of a class never mapped by name


def meanings_for(taxonomy: str) -> Mapping[str, SourceMeaning]:
    """The written synonym table of a known source taxonomy ('cityscapes', 'pascal_voc')."""
    if taxonomy not in SOURCE_MEANINGS:
        raise LamflowError(
            f"unknown source taxonomy {taxonomy!r}; known: {', '.join(SOURCE_MEANINGS)}"
        )
    return SOURCE_MEANINGS[taxonomy]


def source_synsets(
    source_classes: Sequence[str],
    meanings: Mapping[str, SourceMeaning] | None = None,
    wordnet: WordNetNouns | None = None,
) -> list[Synset]:
    """One Synset per source class: its name, the table's synonyms, and as hypernyms the
    table's broader names followed by WordNet's chain of the class's sense (when `wordnet` is
    given and the sense is known: the table's wnid, else the name's first noun sense)."""
    meanings = meanings or {}
    synsets = []
    for name in source_classes:
        meaning = meanings.get(name, SourceMeaning())
        wnid = meaning.wnid or (wordnet.first_sense(name) if wordnet is not None else None)
        synset = Synset(
            name,
            synonyms=[s for s in meaning.synonyms if s != name],
            wnids=[wnid] if wnid else [],
        )
        if wordnet is not None and wnid:
            add_wordnet_hypernyms([synset], wordnet)
        synset.hypernyms = list(dict.fromkeys([*meaning.broader, *synset.hypernyms]))
        synsets.append(synset)
    return synsets


def propose_source_mapping(
    source_classes: Sequence[str],
    targets: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
    *,
    taxonomy: str | None = None,
    wordnet: WordNetNouns | None = None,
    synonyms: Mapping[str, SourceMeaning] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    target_synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[MappingRow]:
    """Propose source class -> target class (or UNMAPPED) from the names alone.

    Args:
        source_classes: the network's class names in output-channel order.
        targets: the target class names (a classes.json's names).
        embed: texts (N,) -> (N, D) unit-length embeddings (default_embedder().embed).
        taxonomy: a known source taxonomy whose written table (lam.source_taxonomies) gives
            the classes' synonyms and broader names; None = names (and WordNet) only.
        wordnet: adds each class's WordNet hypernyms after the table's broader names.
        synonyms: per-class meanings that replace the taxonomy table's entry of that class.
        threshold: minimum cosine similarity to map at all (see DEFAULT_THRESHOLD).
        target_synonyms: extra names per target class, passed to `map_synsets`.
    Returns:
        one MappingRow per source class, same order; catch-all classes ('background') are
        UNMAPPED with source 'catch-all'.
    """
    if len(set(source_classes)) != len(source_classes):
        raise ValueError(f"source class names repeat: {list(source_classes)}")
    meanings = {**(meanings_for(taxonomy) if taxonomy else {}), **(synonyms or {})}
    named = [c for c in source_classes if c.lower() not in CATCH_ALL]
    rows = map_synsets(
        source_synsets(named, meanings, wordnet),
        targets,
        embed,
        threshold=threshold,
        target_synonyms=target_synonyms,
    )
    by_name = {r.synset: r for r in rows}
    return [
        by_name.get(c) or MappingRow(c, UNMAPPED, 0.0, CATCH_ALL_SOURCE) for c in source_classes
    ]


def check_rows(
    rows: Sequence[MappingRow], source_classes: Sequence[str], targets: Sequence[str]
) -> None:
    """LamflowError naming the first row whose target is not a target class (nor UNMAPPED),
    or a source class with two rows: a hand-edited table must not fail silently."""
    allowed = {*targets, UNMAPPED}
    seen: set[str] = set()
    for row in rows:
        if row.target not in allowed:
            raise LamflowError(
                f"source mapping row {row.synset!r} -> {row.target!r}: not a target class "
                f"(targets: {', '.join(targets)}; or {UNMAPPED!r})"
            )
        if row.synset in seen:
            raise LamflowError(f"source mapping has two rows for {row.synset!r}")
        seen.add(row.synset)


def mapping_matrix(
    rows: Sequence[MappingRow], source_classes: Sequence[str], targets: Sequence[str]
) -> np.ndarray:
    """(len(targets), len(source_classes)) float32 0/1: M[t, s] = 1 when source class s maps
    onto target t. A source class that is unmapped, or has no row, has an all-zero column.

    Target scores are M @ source probabilities (per pixel), so each target sums the classes
    mapped onto it. Raises LamflowError for a row naming an unknown target class.
    """
    check_rows(rows, source_classes, targets)
    t_index = {t: i for i, t in enumerate(targets)}
    s_index = {s: j for j, s in enumerate(source_classes)}
    matrix = np.zeros((len(targets), len(source_classes)), np.float32)
    for row in rows:
        if row.synset in s_index and row.target != UNMAPPED:
            matrix[t_index[row.target], s_index[row.synset]] = 1.0
    return matrix


def read_source_mapping(doc: Mapping[str, Any], taxonomy: str) -> list[MappingRow] | None:
    """The rows stored for `taxonomy` in a vocabulary.yaml document, or None when it has none.

    The layout is `source_mapping: {TAXONOMY: {rows: [{synset, target, similarity, source}],
    ...}}`. Raises LamflowError for a malformed section (it was edited by hand).
    """
    section = doc.get(SOURCE_KEY) if isinstance(doc, Mapping) else None
    if not section:
        return None
    if not isinstance(section, Mapping):
        raise LamflowError(f"{SOURCE_KEY} must map taxonomy names to tables, got {section!r}")
    entry = section.get(taxonomy)
    if entry is None:
        return None
    raw = entry.get("rows") if isinstance(entry, Mapping) else None
    if not isinstance(raw, list):
        raise LamflowError(f"{SOURCE_KEY}.{taxonomy} must hold a list of rows under 'rows'")
    rows = []
    for r in raw:
        if not isinstance(r, Mapping) or "synset" not in r or "target" not in r:
            raise LamflowError(
                f"{SOURCE_KEY}.{taxonomy}: row {r!r} needs 'synset' (the source class) and 'target'"
            )
        rows.append(
            MappingRow(
                str(r["synset"]),
                str(r["target"]),
                float(r.get("similarity") or 0.0),
                str(r.get("source") or "manual"),
            )
        )
    return rows


def write_source_mapping(
    doc: dict[str, Any],
    taxonomy: str,
    rows: Sequence[MappingRow],
    *,
    keep_manual: bool = True,
    target_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`doc` with `rows` stored under `source_mapping.TAXONOMY` (in place, and returned).

    With `keep_manual`, rows already stored there with source 'manual' override the new rows
    of the same source class (`merge_manual`), so a person's corrections survive re-runs.
    `target_classes` are recorded beside the rows, for the reader of the file. Other
    taxonomies' tables and the rest of the document are left as they are.
    """
    new = [MappingRow(**asdict(r)) for r in rows]
    if keep_manual:
        section = doc.get(SOURCE_KEY)
        previous = section.get(taxonomy) if isinstance(section, Mapping) else None
        old_rows = previous.get("rows") if isinstance(previous, Mapping) else None
        old_rows = old_rows if isinstance(old_rows, list) else []
        if target_classes is not None:  # a manual row for a target that is gone cannot stay
            allowed = {*target_classes, UNMAPPED}
            stale = [
                r for r in old_rows if isinstance(r, Mapping) and r.get("target") not in allowed
            ]
            for r in stale:
                log.warning("dropping manual row %s: %r is not a target class", r, r.get("target"))
            old_rows = [r for r in old_rows if not any(r is s for s in stale)]
        merge_manual(new, old_rows)
    entry: dict[str, Any] = {"rows": [asdict(r) for r in new]}
    if target_classes is not None:
        entry = {"target_classes": list(target_classes), **entry}
    section = doc.get(SOURCE_KEY)
    doc[SOURCE_KEY] = {**(section if isinstance(section, Mapping) else {}), taxonomy: entry}
    return doc
