"""Which source class of a pretrained network feeds which target class: the mapping in use.

A network pretrained on Cityscapes or PASCAL VOC is turned into an annotator for a target
taxonomy (a classes.json) through a source -> target class map (lam.class_transfer). The map
comes from `--vocabulary FILE` when that file holds rows for the network's taxonomy (the
`source_mapping` section of vocabulary.yaml, corrected by a person where needed), otherwise
it is proposed from the class names. File I/O is through lamflow.storage (fsspec).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import yaml

from lam.class_transfer import (
    DEFAULT_THRESHOLD,
    check_rows,
    propose_source_mapping,
    read_source_mapping,
    write_source_mapping,
)
from lam.errors import LamflowError
from lam.vocabulary.taxonomy import MappingRow
from lam.vocabulary.text_embedding import default_embedder
from lam.vocabulary.wordnet import WordNetNouns, find_wordnet_dir
from lamflow.storage import read_text

log = logging.getLogger(__name__)
FROM_NAMES = "class names"


def propose_from_names(
    taxonomy: str,
    source_classes: Sequence[str],
    target_classes: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    wordnet_dir: str | None = None,
) -> list[MappingRow]:
    """`propose_source_mapping` with the packaged MiniLM, the taxonomy's written table, and
    WordNet when installed (`wordnet_dir`, else $WNSEARCHDIR or /usr/share/wordnet)."""
    folder = find_wordnet_dir(wordnet_dir or None)
    return propose_source_mapping(
        source_classes,
        target_classes,
        default_embedder().embed,
        taxonomy=taxonomy,
        wordnet=WordNetNouns(folder) if folder is not None else None,
        threshold=threshold,
    )


def _load_doc(url: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(read_text(url))
    except yaml.YAMLError as exc:
        raise LamflowError(f"vocabulary {url} is not YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise LamflowError(f"vocabulary {url}: expected a mapping (vocabulary.yaml)")
    return doc


def proposes_from_names(
    taxonomy: str, source_classes: Sequence[str], vocabulary_url: str | None = None
) -> bool:
    """Whether `source_mapping_for` would propose any row from the names: no file, a file
    without rows for `taxonomy`, or one that lacks some of `source_classes`. Only then can
    WordNet (read by the proposal) change the map in use."""
    stored = read_source_mapping(_load_doc(vocabulary_url), taxonomy) if vocabulary_url else None
    return stored is None or not set(source_classes) <= {r.synset for r in stored}


def source_mapping_for(
    taxonomy: str,
    source_classes: Sequence[str],
    target_classes: Sequence[str],
    vocabulary_url: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    wordnet_dir: str | None = None,
) -> tuple[list[MappingRow], str]:
    """The source -> target rows to use, and where they came from.

    Args:
        taxonomy: the network's source taxonomy ('cityscapes', 'pascal_voc').
        source_classes: its class names in output-channel order.
        target_classes: the target classes.json's names, in id order.
        vocabulary_url: a vocabulary.yaml (`--vocabulary FILE`), or None.
        threshold, wordnet_dir: for proposing from names (`propose_from_names`).
    Returns:
        (one row per source class in `source_classes` order, origin): origin is
        "vocabulary URL" when the file has rows for `taxonomy` (taken as written, manual rows
        included; a source class the file lacks is proposed from names, and the origin says
        so), else "class names".
    Raises:
        LamflowError: a row of the file names a class that is not a target class (a typo in a
        hand edit must not silently drop a class), or the file is not a vocabulary.yaml.
    """
    stored = read_source_mapping(_load_doc(vocabulary_url), taxonomy) if vocabulary_url else None
    if stored is None:
        if vocabulary_url:
            log.info("%s has no %s source mapping; proposing from names", vocabulary_url, taxonomy)
        rows = propose_from_names(taxonomy, source_classes, target_classes, threshold, wordnet_dir)
        return rows, FROM_NAMES
    check_rows(stored, source_classes, target_classes)
    by_class = {r.synset: r for r in stored}
    extra = sorted(set(by_class) - set(source_classes))
    if extra:
        log.warning("%s: ignoring rows for classes %s not in %s", vocabulary_url, extra, taxonomy)
    missing = [c for c in source_classes if c not in by_class]
    origin = f"vocabulary {vocabulary_url}"
    if missing:
        proposed = propose_from_names(taxonomy, missing, target_classes, threshold, wordnet_dir)
        by_class.update({r.synset: r for r in proposed})
        origin += f" ({len(missing)} class(es) from class names: {', '.join(missing)})"
    return [by_class[c] for c in source_classes], origin


def add_source_mapping(
    doc: dict[str, Any],
    previous: dict[str, Any] | None,
    taxonomy: str,
    source_classes: Sequence[str],
    target_classes: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    wordnet_dir: str | None = None,
) -> dict[str, Any]:
    """Write the proposed `taxonomy` rows into `doc` (the vocabulary stage's output), keeping
    the manual rows of `previous` (the file being replaced) for that taxonomy."""
    if previous and "source_mapping" in previous:
        doc["source_mapping"] = previous["source_mapping"]  # other taxonomies' tables stay
    rows = propose_from_names(taxonomy, source_classes, target_classes, threshold, wordnet_dir)
    return write_source_mapping(doc, taxonomy, rows, target_classes=target_classes)
