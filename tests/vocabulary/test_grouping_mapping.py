"""Synset clustering and taxonomy mapping with the real packaged MiniLM."""

from __future__ import annotations

import pytest

from lam.vocabulary.filtering import RankedLabel
from lam.vocabulary.grouping import Synset, cluster_labels
from lam.vocabulary.taxonomy import UNMAPPED, MappingRow, map_synsets, merge_manual
from lam.vocabulary.text_embedding import default_embedder

CAMVID = [
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
    "pedestrian", "bicyclist",
]  # fmt: skip


@pytest.fixture(scope="module")
def embedder():
    return default_embedder()


def _ranked(labels: list[str]) -> list[RankedLabel]:
    return [
        RankedLabel(lab, 1.0 - i * 0.05, 1.0 - i * 0.05, 3, 1.0) for i, lab in enumerate(labels)
    ]


def test_embeddings_are_unit_length(embedder):
    vecs = embedder.embed(["car", "automobile"])
    assert vecs.shape == (2, 384)
    assert (abs((vecs**2).sum(axis=1) - 1) < 1e-4).all()


def test_cluster_merges_synonyms_not_different_things(embedder):
    ranked = _ranked(["car", "tree", "automobile", "bicycle", "bike"])
    synsets = cluster_labels(ranked, embedder.embed([r.label for r in ranked]), 0.3)
    groups = {s.name: sorted(s.synonyms) for s in synsets}
    assert groups == {"car": ["automobile"], "tree": [], "bicycle": ["bike"]}
    car = next(s for s in synsets if s.name == "car")
    assert car.score == pytest.approx(1.0) and car.occurrences == 3
    assert [s.name for s in synsets] == ["car", "tree", "bicycle"]  # best score first


def test_cluster_edge_cases(embedder):
    assert cluster_labels([], embedder.embed([]), 0.3) == []
    one = cluster_labels(_ranked(["car"]), embedder.embed(["car"]), 0.3)
    assert [s.name for s in one] == ["car"]
    with pytest.raises(ValueError, match="distance_threshold"):
        cluster_labels(_ranked(["car"]), embedder.embed(["car"]), 0.0)


def test_map_to_camvid_with_threshold_and_hypernyms(embedder):
    synsets = [
        Synset("automobile"),
        Synset("oak", hypernyms=["tree", "woody plant"]),
        Synset("sidewalk"),
        Synset("espresso"),
    ]
    rows = map_synsets(synsets, CAMVID, embedder.embed, threshold=0.5)
    assert [(r.synset, r.target) for r in rows] == [
        ("automobile", "car"),
        ("oak", "tree"),
        ("sidewalk", "sidewalk"),
        ("espresso", UNMAPPED),
    ]
    assert rows[2].similarity == pytest.approx(1.0, abs=1e-3)
    no_hyper = map_synsets([Synset("oak")], CAMVID, embedder.embed, 0.5, hypernym_depth=0)
    assert no_hyper[0].similarity < rows[1].similarity


def test_target_synonyms_and_manual_rows(embedder):
    rows = map_synsets(
        [Synset("lamppost")], ["pole", "sky"], embedder.embed, 0.9, {"pole": ["lamppost"]}
    )
    assert rows[0].target == "pole"
    rows = [MappingRow("espresso", UNMAPPED, 0.1), MappingRow("car", "car", 1.0)]
    merge_manual(rows, [{"synset": "espresso", "target": "sign", "source": "manual"}, "junk"])
    assert (rows[0].target, rows[0].source) == ("sign", "manual")
    assert rows[1].source == "embedding"
