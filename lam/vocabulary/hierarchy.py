"""Hierarchy and LLM refinement of synsets: WordNet hypernyms, LLM grouping, LLM mapping.

Each step either improves the embedding result or leaves it as it was with a warning; no
step can make the stage fail because a model answered badly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lam.errors import LamflowError
from lam.vocabulary.filtering import RankedLabel
from lam.vocabulary.grouping import Synset, synsets_from_groups
from lam.vocabulary.llm import LLM, grouping_prompt, mapping_prompt
from lam.vocabulary.llm_parse import parse_groups, parse_mapping
from lam.vocabulary.taxonomy import UNMAPPED, MappingRow
from lam.vocabulary.wordnet import WordNetNouns

log = logging.getLogger(__name__)


def add_wordnet_hypernyms(synsets: Sequence[Synset], wordnet: WordNetNouns) -> int:
    """Fill `parent` and `hypernyms` (nearest first) of synsets with a WordNet id, in place.

    Returns the number of synsets that got a hierarchy; ids missing from the database are
    logged and skipped.
    """
    done = 0
    for synset in synsets:
        for wnid in synset.wnids:
            try:
                chain = wordnet.hypernym_chain(wnid)
            except LamflowError as exc:
                log.warning("no hypernyms for %s (%s): %s", synset.name, wnid, exc)
                continue
            if chain:
                synset.hypernyms = [name for _, name in chain]
                synset.parent = synset.hypernyms[0]
                synset.hierarchy_source = "wordnet"
                done += 1
            break
    return done


def group_with_llm(ranked: Sequence[RankedLabel], llm: LLM) -> list[Synset] | None:
    """Synsets from the LLM's grouping of `ranked`, or None (caller falls back) on bad output.

    The LLM's group name becomes the canonical name only if it is one of the members, so
    names stay traceable to what a tagger proposed; its parent fills `parent` of synsets
    that WordNet did not reach.
    """
    labels = [r.label for r in ranked]
    try:
        answer = llm.complete(grouping_prompt(labels))
    except LamflowError as exc:
        log.warning("LLM grouping failed (%s); keeping the embedding grouping", exc)
        return None
    groups = parse_groups(answer, labels)
    if groups is None:
        log.warning(
            "LLM grouping answer is malformed; keeping the embedding grouping. Answer began: %r",
            answer[:200],
        )
        return None
    synsets = synsets_from_groups(ranked, [g.members for g in groups])
    by_member = {m: g for g in groups for m in g.members}
    for synset in synsets:
        group = by_member[synset.name]
        if group.name in synset.members and group.name != synset.name:
            synset.synonyms = [m for m in synset.members if m != group.name]
            synset.name = group.name
        if group.parent:
            synset.parent, synset.hierarchy_source = group.parent, "llm"
    return synsets


def refine_mapping_with_llm(rows: list[MappingRow], targets: Sequence[str], llm: LLM) -> int:
    """Let the LLM correct the embedding mapping (pre-refinement), in place.

    Returns the number of rows it changed; on a failed or malformed answer nothing changes
    and a warning is logged. Rows a human marked 'manual' are never touched.
    """
    open_rows = [r for r in rows if r.source != "manual"]
    if not open_rows or not targets:
        return 0
    names = [r.synset for r in open_rows]
    try:
        answer = llm.complete(mapping_prompt(names, targets))
    except LamflowError as exc:
        log.warning("LLM mapping failed (%s); keeping the embedding mapping", exc)
        return 0
    mapping = parse_mapping(answer, names, targets, UNMAPPED)
    if mapping is None:
        log.warning(
            "LLM mapping answer is malformed; keeping the embedding mapping. Answer began: %r",
            answer[:200],
        )
        return 0
    changed = 0
    for row in open_rows:
        if row.synset in mapping and mapping[row.synset] != row.target:
            row.target, row.source = mapping[row.synset], "llm"
            changed += 1
    return changed
