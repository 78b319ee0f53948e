"""Stage `vocabulary`: which classes does a drop contain? Writes vocabulary.yaml.

Frames are read through fsspec, each is tagged by the configured backend
(lam.vocabulary.backends.TAGGERS), per-label probabilities are combined and filtered
(lam.vocabulary.filtering), labels are grouped into synsets (MiniLM clustering, or an LLM),
given WordNet hypernyms where the label has a WordNet id, and mapped onto an optional target
taxonomy. Rows of the mapping table marked `source: manual` in an existing output survive
re-runs, so a human can correct the table and re-run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from lam.class_transfer import SOURCE_TAXONOMIES, read_source_mapping
from lam.errors import LamflowError
from lam.imageio import decode_image
from lam.sampling import evenly_spaced
from lam.vocabulary.backends import LLMS, TAGGERS
from lam.vocabulary.filtering import LabelEvidence, accumulate, rank_labels
from lam.vocabulary.grouping import Synset, cluster_labels
from lam.vocabulary.hierarchy import (
    add_wordnet_hypernyms,
    group_with_llm,
    refine_mapping_with_llm,
)
from lam.vocabulary.proposals import Tagger
from lam.vocabulary.taxonomy import UNMAPPED, MappingRow, map_synsets, merge_manual
from lam.vocabulary.text_embedding import default_embedder
from lam.vocabulary.wordnet import WordNetNouns, find_wordnet_dir
from lamflow.params import VocabularyParams
from lamflow.storage import exists, list_images, read_bytes, read_text, write_text_atomic
from tasks.frame_sources import load_classes
from tasks.source_mapping import add_source_mapping

log = logging.getLogger(__name__)
VOCABULARY_FILE = "vocabulary.yaml"  # a drop's vocabulary, beside its images (nightly flow)
SCHEMA = "lamflow.vocabulary/1"


def build_tagger(params: VocabularyParams) -> Tagger:
    """The proposal backend named by `params.backend`, configured from `params`."""
    if params.backend not in TAGGERS:
        raise LamflowError(
            f"vocabulary.backend {params.backend!r} is unknown; known: {', '.join(TAGGERS)}"
        )
    cls = TAGGERS.get(params.backend)
    if params.backend == "imagenet-tagger":
        return cls(views=params.views, top_k=params.top_k, min_prob=params.min_prob)
    if params.backend in ("clip", "siglip"):
        candidates = params.candidates
        if not candidates:
            from lam.vocabulary.imagenet_tagger import imagenet_classes

            candidates = [name for _, name in imagenet_classes()]
        return cls(
            params.model_dir,
            candidates,
            views=params.views,
            top_k=params.top_k,
            min_prob=params.min_prob,
            template=params.template,
        )
    if params.backend == "vlm":
        from lam.vocabulary.vlm_tagger import DEFAULT_PROMPT

        return cls(
            params.model_dir,
            prompt=params.prompt or DEFAULT_PROMPT,
            samples=params.samples,
            top_p=params.top_p,
            temperature=params.temperature,
            repetition_penalty=params.repetition_penalty,
            token_combine=params.combine,
            seed=params.seed,
        )
    raise LamflowError(f"vocabulary.backend {params.backend!r} has no builder")


def build_llm(params: VocabularyParams) -> Any | None:
    """The optional LLM backend (`params.llm`), or None when it is ''."""
    if not params.llm:
        return None
    cls = LLMS.get(params.llm)
    if params.llm == "transformers":
        return cls(params.llm_model_dir, gguf_file=params.llm_gguf_file)
    return cls(params.llm_url, model=params.llm_model)


def _target_names(target: str | None) -> list[str]:
    if not target:
        return []
    return list(load_classes(target).names)


def _previous_doc(out: str) -> dict[str, Any] | None:
    """An existing output (for manual corrections), None if none or unreadable."""
    if not exists(out):
        return None
    try:
        data = yaml.safe_load(read_text(out)) or {}
    except yaml.YAMLError:
        log.warning("existing %s is not YAML; manual mapping rows cannot be kept", out)
        return None
    return data if isinstance(data, dict) else None


def _previous_mapping(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Mapping rows of an existing output (for manual corrections), [] if none."""
    rows = (previous or {}).get("mapping", [])
    return rows if isinstance(rows, list) else []


def _subsample(frames: list[tuple[str, str]], max_frames: int) -> list[tuple[str, str]]:
    """At most `max_frames` evenly spaced frames (all when 0): spread over the whole drop."""
    return evenly_spaced(frames, max_frames)


def propose_frames(
    frames: list[tuple[str, str]], tagger: Tagger, how: str, progress: bool = True
) -> tuple[dict[str, LabelEvidence], int, list[str]]:
    """Tag every frame: (label evidence, frames tagged, stems skipped as undecodable)."""
    evidence: dict[str, LabelEvidence] = {}
    skipped: list[str] = []
    tagged = 0
    for stem, url in tqdm(frames, desc="vocabulary", unit="frame", disable=not progress):
        try:
            image = decode_image(read_bytes(url), url)
        except LamflowError as exc:
            log.warning("skipping frame %s: %s", stem, exc)
            skipped.append(stem)
            continue
        proposals = tagger.propose(image)
        accumulate(evidence, proposals.labels, how, proposals.wnids)
        tagged += 1
    return evidence, tagged, skipped


def _synset_rows(synsets: list[Synset]) -> list[dict[str, Any]]:
    rows = []
    for s in synsets:
        row = asdict(s)
        row["score"] = round(s.score, 6)
        rows.append(row)
    return rows


def vocabulary(
    images: str,
    out: str,
    params: VocabularyParams | None = None,
    target: str | None = None,
    progress: bool = True,
    skip_existing: bool = False,
    source_taxonomy: str | None = None,
) -> dict[str, Any]:
    """Discover the label vocabulary of the frames in `images` and write it to `out`.

    Args:
        images: URL of a folder of frames (STEM.jpg/.png).
        out: URL of vocabulary.yaml to write (atomically).
        params: the `vocabulary` section of params.yaml.
        target: URL of a classes.json to map synsets onto (optional).
        skip_existing: when `out` already holds the vocabulary of these images, for this target
            and these params, return it as it is (the nightly flow relabels a drop without
            re-tagging its frames: a drop's frames never change once ingested).
        source_taxonomy: the taxonomy of a pretrained annotator network ('cityscapes',
            'pascal_voc'): its classes' map onto `target`, proposed from the names, is written
            too (section `source_mapping`, manual rows kept; tasks/source_mapping.py).
    Returns:
        the document written to `out` (labels, synsets, mapping, counts, provenance).
    """
    params = params or VocabularyParams()
    _check_source_taxonomy(source_taxonomy)
    if skip_existing:
        done = _existing(images, out, params, target)
        if done is not None and source_taxonomy and target:
            if read_source_mapping(done, source_taxonomy) is None:  # add it, do not re-tag
                _add_source_mapping(done, done, source_taxonomy, params)
                _write(out, done)
        if done is not None:
            return done
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)
    targets = _target_names(target)
    frames = _subsample(list_images(images), params.max_frames)
    if not frames:
        raise LamflowError(f"no frames (.jpg/.png) in {images}")
    tagger = build_tagger(params)
    evidence, tagged, skipped = propose_frames(frames, tagger, params.combine, progress)
    if tagged == 0:
        raise LamflowError(f"none of the {len(frames)} frame(s) in {images} could be decoded")
    ranked = rank_labels(
        evidence.values(),
        tagged,
        how=params.combine,
        threshold=params.threshold,
        percentile=params.percentile,
        probability=params.probability,
        min_occurrences=params.min_occurrences,
        frame_weighting=params.frame_weighting,
    )
    embedder = default_embedder()
    llm = build_llm(params)
    synsets = group_with_llm(ranked, llm) if llm is not None and ranked else None
    grouping = "llm" if synsets is not None else "embedding"
    if synsets is None:
        embeddings = embedder.embed([r.label for r in ranked])
        synsets = cluster_labels(ranked, embeddings, params.cluster_distance)
    wordnet_dir = find_wordnet_dir(params.wordnet_dir or None)
    wordnet_version = None
    if wordnet_dir is not None:
        wordnet = WordNetNouns(wordnet_dir)
        wordnet_version = wordnet.version
        add_wordnet_hypernyms(synsets, wordnet)
    elif any(s.wnids for s in synsets):
        log.warning("no WordNet database found (apt install wordnet-base); no hypernyms")
    mapping: list[MappingRow] = map_synsets(synsets, targets, embedder.embed, params.map_threshold)
    previous = _previous_doc(out)
    merge_manual(mapping, _previous_mapping(previous))
    if llm is not None and targets and params.llm_refine_mapping:
        refine_mapping_with_llm(mapping, targets, llm)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "images": images,
        "target": target or "",
        "target_classes": targets,
        "frames": {"listed": len(frames), "tagged": tagged, "skipped": len(skipped)},
        "skipped_frames": skipped,
        "provenance": {
            "tagger": tagger.version,
            "embedder": embedder.version,
            "grouping": grouping,
            "llm": getattr(llm, "version", None),
            "wordnet": wordnet_version,
            "params": params.model_dump(),
        },
        "labels": [
            {
                "label": r.label,
                "score": round(r.score, 6),
                "probability": round(r.probability, 6),
                "occurrences": r.occurrences,
                "frequency": round(r.frequency, 4),
                "wnid": r.wnid,
            }
            for r in ranked
        ],
        "synsets": _synset_rows(synsets),
        "mapping": [asdict(m) for m in mapping],
    }
    if previous and previous.get("source_mapping"):  # a person's rows outlive any re-run
        doc["source_mapping"] = previous["source_mapping"]
    if source_taxonomy and targets:
        _add_source_mapping(doc, previous, source_taxonomy, params)
    _write(out, doc)
    doc["seconds"] = round(time.perf_counter() - started, 2)
    _publish_artifact(doc)
    log.info(
        "vocabulary: %d labels, %d synsets from %d frame(s) (%d skipped) in %.1fs",
        len(ranked),
        len(synsets),
        tagged,
        len(skipped),
        doc["seconds"],
    )
    return doc


def _check_source_taxonomy(taxonomy: str | None) -> None:
    if taxonomy and taxonomy not in SOURCE_TAXONOMIES:
        raise LamflowError(
            f"source taxonomy {taxonomy!r} is unknown; known: {', '.join(SOURCE_TAXONOMIES)}"
        )


def _add_source_mapping(
    doc: dict[str, Any], previous: dict[str, Any] | None, taxonomy: str, params: VocabularyParams
) -> None:
    """Propose `taxonomy`'s source -> target rows into `doc`, keeping `previous`'s manual
    rows (why here: a person edits one file, vocabulary.yaml, for both tables)."""
    add_source_mapping(
        doc,
        previous,
        taxonomy,
        SOURCE_TAXONOMIES[taxonomy],
        doc["target_classes"],
        wordnet_dir=params.wordnet_dir or None,
    )


def _write(out: str, doc: dict[str, Any]) -> None:
    header = (
        "# Vocabulary discovered by `lamflow vocabulary`. The mapping table is editable: change\n"
        f"# a row's target (a target class or '{UNMAPPED}') and set its source to 'manual';\n"
        "# re-runs keep manual rows.\n"
    )
    if doc.get("source_mapping"):
        header += (
            "# So are the source_mapping tables: a pretrained network's class (synset) -> target\n"
            "# class; `lamflow train --vocabulary FILE` uses them as written.\n"
        )
    # The file holds no timing: the same frames and params give the same bytes (data/
    # vocabulary.yaml is kept in git, and dvc must not see a change where there is none).
    write_text_atomic(out, header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def _existing(
    images: str, out: str, params: VocabularyParams, target: str | None
) -> dict[str, Any] | None:
    """The vocabulary already at `out` when it was made from `images`, for `target`, with
    these params; else None."""
    if not exists(out):
        return None
    try:
        doc = yaml.safe_load(read_text(out))
    except yaml.YAMLError:
        return None
    same = (
        isinstance(doc, dict)
        and doc.get("images") == images
        and doc.get("target") == (target or "")
        and (doc.get("provenance") or {}).get("params") == params.model_dump()
    )
    return doc if same else None


def artifact_markdown(doc: dict[str, Any], top: int = 20) -> str:
    """Markdown of the top synsets and the mapping table (for the Prefect UI)."""
    lines = [
        f"# Vocabulary of `{doc['images']}`",
        f"{doc['frames']['tagged']} frames tagged, {doc['frames']['skipped']} skipped; "
        f"tagger `{doc['provenance']['tagger']}`, grouping {doc['provenance']['grouping']}.",
        "",
        "| synset | synonyms | score | frames | parent |",
        "|---|---|---|---|---|",
    ]
    for s in doc["synsets"][:top]:
        lines.append(
            f"| {s['name']} | {', '.join(s['synonyms'][:4])} | {s['score']:.3f} | "
            f"{s['occurrences']} | {s['parent'] or ''} |"
        )
    if doc["target_classes"]:
        lines += ["", "| synset | target | similarity | source |", "|---|---|---|---|"]
        for m in doc["mapping"]:
            lines.append(
                f"| {m['synset']} | {m['target']} | {m['similarity']:.2f} | {m['source']} |"
            )
    return "\n".join(lines)


def _publish_artifact(doc: dict[str, Any]) -> None:
    """A Prefect markdown artifact when running inside a flow or task run; no-op outside."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key="vocabulary",
        markdown=artifact_markdown(doc),
        description=json.dumps(doc["frames"]),
    )
