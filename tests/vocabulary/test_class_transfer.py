"""Taxonomy transfer with no seeds: Cityscapes / PASCAL VOC classes onto CamVid's, by name."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lam.class_transfer import (
    CITYSCAPES_CLASSES,
    PASCAL_VOC_CLASSES,
    SOURCE_KEY,
    mapping_matrix,
    propose_source_mapping,
    read_source_mapping,
    source_synsets,
    write_source_mapping,
)
from lam.errors import LamflowError
from lam.source_taxonomies import CITYSCAPES_MEANINGS, PASCAL_VOC_MEANINGS, SourceMeaning
from lam.vocabulary.taxonomy import UNMAPPED, MappingRow
from lam.vocabulary.wordnet import WordNetNouns, find_wordnet_dir
from lamflow.params import VocabularyParams
from tasks.source_mapping import FROM_NAMES, source_mapping_for
from tasks.vocabulary import vocabulary
from tests.hand_maps import CITYSCAPES_TO_CAMVID

CAMVID = [
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
    "pedestrian", "bicyclist",
]  # fmt: skip
# The lead's hand map (shared/weights/README.md: ESPNetv2 61.2 mIoU on CamVid val with it).
HAND_MAP = CITYSCAPES_TO_CAMVID


@pytest.fixture(scope="module")
def embed():
    """The packaged MiniLM's embed function; the module skips without the package."""
    from lam.vocabulary.text_embedding import default_embedder, minilm_path

    try:
        minilm_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    return default_embedder().embed


def _disagreements(rows: list[MappingRow]) -> dict[str, str]:
    return {r.synset: r.target for r in rows if r.target != HAND_MAP[r.synset]}


def test_tables_cover_their_taxonomies():
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    assert len(PASCAL_VOC_CLASSES) == 21 and PASCAL_VOC_CLASSES[15] == "person"
    assert set(CITYSCAPES_MEANINGS) == set(CITYSCAPES_CLASSES)
    assert set(PASCAL_VOC_MEANINGS) == set(PASCAL_VOC_CLASSES) - {"background"}
    for meaning in [*CITYSCAPES_MEANINGS.values(), *PASCAL_VOC_MEANINGS.values()]:
        assert meaning.why and len(meaning.wnid) == 9 and meaning.wnid.startswith("n")


def test_cityscapes_onto_camvid_matches_the_hand_map(embed):
    rows = propose_source_mapping(CITYSCAPES_CLASSES, CAMVID, embed, taxonomy="cityscapes")
    assert [r.synset for r in rows] == list(CITYSCAPES_CLASSES)
    # 18 of 19: 'terrain' (grass, soil, sand) is by its names nearer 'road' (0.51) than
    # 'tree'; the threshold leaves it unmapped rather than wrong.
    assert _disagreements(rows) == {"terrain": UNMAPPED}
    assert all(r.source == "embedding" for r in rows)
    by_name = {r.synset: r for r in rows}
    assert by_name["road"].similarity == pytest.approx(1.0, abs=1e-3)
    assert by_name["wall"].similarity < 1.0  # reached through 'construction', discounted


def test_names_alone_do_worse_than_the_written_table(embed):
    rows = propose_source_mapping(CITYSCAPES_CLASSES, CAMVID, embed)  # no table, no WordNet
    wrong = _disagreements(rows)
    assert {"wall", "traffic light", "vegetation", "bus", "train"} <= set(wrong)


def test_real_wordnet_if_installed(embed):
    folder = find_wordnet_dir()
    if folder is None:
        pytest.skip("WordNet 3.0 database not installed (apt install wordnet-base)")
    wn = WordNetNouns(folder)
    assert wn.first_sense("traffic light") == CITYSCAPES_MEANINGS["traffic light"].wnid
    rows = propose_source_mapping(
        CITYSCAPES_CLASSES, CAMVID, embed, taxonomy="cityscapes", wordnet=wn
    )
    assert _disagreements(rows) == {"terrain": UNMAPPED}
    synsets = source_synsets(["truck"], CITYSCAPES_MEANINGS, wn)
    assert synsets[0].hypernyms[:2] == ["motor vehicle", "vehicle"]  # table first, deduped
    assert "wheeled vehicle" in synsets[0].hypernyms  # then WordNet's chain


def _write_wordnet_excerpt(folder: Path) -> None:
    """data.noun + index.noun in WordNet 3.0's format: cab -> car -> motor vehicle."""
    text = "  1 A tiny excerpt in the format of WordNet 3.0 data.noun\n"
    offsets: dict[str, int] = {}
    for key, lemma, parent in [
        ("mv", "motor_vehicle", None),
        ("car", "car", "mv"),
        ("cab", "cab", "car"),
    ]:
        offsets[key] = len(text.encode())
        ptr = f"001 @ {offsets[parent]:08d} n 0000" if parent else "000"
        text += f"{offsets[key]:08d} 06 n 01 {lemma} 0 {ptr} | gloss\n"
    (folder / "data.noun").write_text(text)
    index = "  1 A tiny excerpt in the format of WordNet 3.0 index.noun\n"
    for key, lemma in [("cab", "cab"), ("car", "car"), ("mv", "motor_vehicle")]:
        index += f"{lemma} n 1 1 @ 1 0 {offsets[key]:08d}  \n"
    (folder / "index.noun").write_text(index)


def test_wordnet_hypernyms_of_a_class_not_in_any_table(embed, tmp_path):
    _write_wordnet_excerpt(tmp_path)
    wn = WordNetNouns(tmp_path)
    assert wn.first_sense("Cab") is not None and wn.first_sense("zebra") is None
    rows = propose_source_mapping(["cab", "zebra"], ["car", "road"], embed, wordnet=wn)
    assert [(r.synset, r.target) for r in rows] == [("cab", "car"), ("zebra", UNMAPPED)]
    assert source_synsets(["cab"], None, wn)[0].hypernyms == ["car", "motor vehicle"]


def test_pascal_voc_onto_camvid(embed):
    rows = propose_source_mapping(PASCAL_VOC_CLASSES, CAMVID, embed, taxonomy="pascal_voc")
    mapped = {r.synset: r.target for r in rows if r.target != UNMAPPED}
    assert mapped == {
        "person": "pedestrian",
        "car": "car",
        "bus": "car",
        "bicycle": "bicyclist",
        "motorbike": "bicyclist",
    }
    background = rows[0]
    assert background.synset == "background" and background.source == "catch-all"


def test_other_targets_use_the_same_table(embed):
    """The table is about the source classes: a coarse target with 'vehicle', 'vegetation'."""
    targets = ["road", "building", "vegetation", "sky", "person", "vehicle", "traffic sign"]
    rows = propose_source_mapping(CITYSCAPES_CLASSES, targets, embed, taxonomy="cityscapes")
    got = {r.synset: r.target for r in rows}
    assert {got[c] for c in ("car", "truck", "bus", "train", "motorcycle")} == {"vehicle"}
    assert got["terrain"] == got["vegetation"] == "vegetation"
    assert got["traffic light"] == "traffic sign" and got["rider"] == "person"
    same = propose_source_mapping(
        CITYSCAPES_CLASSES, list(CITYSCAPES_CLASSES), embed, taxonomy="cityscapes"
    )
    assert [r.target for r in same] == list(CITYSCAPES_CLASSES)


def test_a_caller_meaning_replaces_the_table_entry(embed):
    grass = {"terrain": SourceMeaning(synonyms=("trees and grass",))}
    rows = propose_source_mapping(["terrain"], CAMVID, embed, taxonomy="cityscapes", synonyms=grass)
    assert rows[0].target == "tree"
    with pytest.raises(LamflowError, match="unknown source taxonomy 'kitti'"):
        propose_source_mapping(["road"], CAMVID, embed, taxonomy="kitti")
    with pytest.raises(ValueError, match="repeat"):
        propose_source_mapping(["road", "road"], CAMVID, embed)


def test_mapping_matrix_columns():
    rows = [
        MappingRow("road", "road", 1.0),
        MappingRow("wall", "building", 0.7),
        MappingRow("building", "building", 1.0),
        MappingRow("terrain", UNMAPPED, 0.5),
    ]
    sources = ["road", "wall", "building", "terrain", "sky"]  # sky: no row at all
    m = mapping_matrix(rows, sources, CAMVID)
    assert m.shape == (11, 5) and m.dtype == np.float32
    assert m[CAMVID.index("road"), 0] == 1
    assert m[CAMVID.index("building"), 1] == m[CAMVID.index("building"), 2] == 1
    assert m[:, 3].sum() == 0 and m[:, 4].sum() == 0  # unmapped / missing: zero columns
    assert m.sum() == 3
    probs = np.array([0.1, 0.2, 0.3, 0.3, 0.1], np.float32)
    assert (m @ probs)[CAMVID.index("building")] == pytest.approx(0.5)
    with pytest.raises(LamflowError, match="'wal' -> 'buildin'.*not a target class"):
        mapping_matrix([MappingRow("wal", "buildin", 1.0)], sources, CAMVID)
    with pytest.raises(LamflowError, match="two rows for 'road'"):
        mapping_matrix(rows[:1] * 2, sources, CAMVID)


def test_yaml_round_trip_and_manual_rows_win():
    rows = [MappingRow("road", "road", 1.0), MappingRow("terrain", UNMAPPED, 0.5123)]
    doc = {"schema": "lamflow.vocabulary/1", "mapping": [{"synset": "car", "target": "car"}]}
    write_source_mapping(doc, "cityscapes", rows, target_classes=CAMVID)
    loaded = yaml.safe_load(yaml.safe_dump(doc, sort_keys=False))
    assert read_source_mapping(loaded, "cityscapes") == rows
    assert read_source_mapping(loaded, "pascal_voc") is None
    assert loaded["mapping"] == [{"synset": "car", "target": "car"}]  # tagger rows untouched
    assert loaded[SOURCE_KEY]["cityscapes"]["target_classes"] == CAMVID

    # a person corrects a row, then the proposal is written again
    loaded[SOURCE_KEY]["cityscapes"]["rows"][1].update(target="tree", source="manual")
    loaded[SOURCE_KEY]["cityscapes"]["rows"].append(
        {"synset": "wall", "target": "gone", "source": "manual"}
    )
    again = [*rows, MappingRow("wall", "building", 0.73)]
    write_source_mapping(loaded, "cityscapes", again, target_classes=CAMVID)
    write_source_mapping(loaded, "pascal_voc", [MappingRow("person", "pedestrian", 0.65)])
    final = {r.synset: r for r in read_source_mapping(loaded, "cityscapes") or []}
    assert (final["terrain"].target, final["terrain"].source) == ("tree", "manual")
    assert final["road"].source == "embedding"
    assert final["wall"].target == "building"  # a manual row naming a gone class is dropped
    assert read_source_mapping(loaded, "pascal_voc") == [MappingRow("person", "pedestrian", 0.65)]
    assert rows[1].target == UNMAPPED  # the caller's rows are not modified


def test_read_rejects_malformed_sections():
    assert read_source_mapping({}, "cityscapes") is None
    assert read_source_mapping({SOURCE_KEY: {}}, "cityscapes") is None
    with pytest.raises(LamflowError, match="must map taxonomy names"):
        read_source_mapping({SOURCE_KEY: ["road"]}, "cityscapes")
    with pytest.raises(LamflowError, match="list of rows under 'rows'"):
        read_source_mapping({SOURCE_KEY: {"cityscapes": ["road"]}}, "cityscapes")
    with pytest.raises(LamflowError, match="needs 'synset'"):
        read_source_mapping({SOURCE_KEY: {"cityscapes": {"rows": [{"x": 1}]}}}, "cityscapes")
    hand = {SOURCE_KEY: {"cityscapes": {"rows": [{"synset": "wall", "target": "fence"}]}}}
    assert read_source_mapping(hand, "cityscapes") == [MappingRow("wall", "fence", 0.0, "manual")]


def test_source_mapping_for_file_or_names(embed, tmp_path, caplog):
    sources = ["road", "wall", "terrain"]
    rows, origin = source_mapping_for("cityscapes", sources, CAMVID, None)
    assert origin == FROM_NAMES
    assert [r.target for r in rows] == ["road", "building", UNMAPPED]

    doc = write_source_mapping({}, "cityscapes", [MappingRow("terrain", "tree", 0, "manual")])
    doc[SOURCE_KEY]["cityscapes"]["rows"].append({"synset": "bridge", "target": "building"})
    path = tmp_path / "vocabulary.yaml"
    path.write_text(yaml.safe_dump(doc))
    with caplog.at_level(logging.WARNING):
        rows, origin = source_mapping_for("cityscapes", sources, CAMVID, str(path))
    assert [(r.synset, r.target, r.source) for r in rows] == [
        ("road", "road", "embedding"),
        ("wall", "building", "embedding"),
        ("terrain", "tree", "manual"),
    ]
    assert origin == f"vocabulary {path} (2 class(es) from class names: road, wall)"
    assert "bridge" in caplog.text
    rows, origin = source_mapping_for("cityscapes", ["terrain"], CAMVID, str(path))
    assert origin == f"vocabulary {path}" and rows[0].target == "tree"

    _, origin = source_mapping_for("pascal_voc", ["person"], CAMVID, str(path))
    assert origin == FROM_NAMES
    doc[SOURCE_KEY]["cityscapes"]["rows"][0]["target"] = "grass"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(LamflowError, match="'terrain' -> 'grass'"):
        source_mapping_for("cityscapes", sources, CAMVID, str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(LamflowError, match="expected a mapping"):
        source_mapping_for("cityscapes", sources, CAMVID, str(path))


def test_vocabulary_stage_writes_the_source_mapping(embed, camvid, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    frame = sorted((camvid / "val" / "images").glob("*.jpg"))[0]
    Image.open(frame).convert("RGB").resize((160, 120)).save(drop / frame.name)
    out = tmp_path / "vocabulary.yaml"
    params = VocabularyParams(views="full", top_k=3, threshold="none")
    target = str(camvid / "classes.json")
    args = (str(drop), str(out), params, target)
    doc = vocabulary(*args, progress=False, source_taxonomy="cityscapes")
    rows = read_source_mapping(yaml.safe_load(out.read_text()), "cityscapes")
    assert rows is not None and [r.synset for r in rows] == list(CITYSCAPES_CLASSES)
    assert len(doc["mapping"]) == len(doc["synsets"])  # the tagger rows as before
    assert "source_mapping tables" in out.read_text().split("schema:")[0]

    edited = yaml.safe_load(out.read_text())
    edited[SOURCE_KEY]["cityscapes"]["rows"][9].update(target="tree", source="manual")
    out.write_text(yaml.safe_dump(edited, sort_keys=False))
    vocabulary(*args, progress=False, source_taxonomy="cityscapes")
    terrain = (read_source_mapping(yaml.safe_load(out.read_text()), "cityscapes") or [])[9]
    assert (terrain.synset, terrain.target, terrain.source) == ("terrain", "tree", "manual")

    # skip_existing adds a missing taxonomy's table without tagging again
    again = vocabulary(*args, progress=False, skip_existing=True, source_taxonomy="pascal_voc")
    assert "seconds" not in again  # the existing document, not a new run
    stored = yaml.safe_load(out.read_text())
    assert read_source_mapping(stored, "pascal_voc") is not None
    assert (read_source_mapping(stored, "cityscapes") or [])[9].source == "manual"
    # a run without --source-taxonomy keeps the tables (and their manual rows) as they are
    vocabulary(*args, progress=False)
    kept = yaml.safe_load(out.read_text())
    assert kept[SOURCE_KEY] == stored[SOURCE_KEY]
    with pytest.raises(LamflowError, match="source taxonomy 'kitti' is unknown"):
        vocabulary(*args, progress=False, source_taxonomy="kitti")
