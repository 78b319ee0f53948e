"""WordNet database reader, LLM answer parsing, and the OpenAI-compatible HTTP backend."""

from __future__ import annotations

import json
import logging

import pytest

from lam.errors import LamflowError
from lam.vocabulary.backends import LLMS
from lam.vocabulary.filtering import RankedLabel
from lam.vocabulary.grouping import Synset
from lam.vocabulary.hierarchy import (
    add_wordnet_hypernyms,
    group_with_llm,
    refine_mapping_with_llm,
)
from lam.vocabulary.llm_parse import extract_json, parse_groups, parse_mapping
from lam.vocabulary.taxonomy import UNMAPPED, MappingRow
from lam.vocabulary.wordnet import WordNetNouns, find_wordnet_dir

from .conftest import ChatHandler


def _write_data_noun(folder) -> None:
    """A three-synset data.noun in WordNet's format: offsets are byte positions in the file."""
    header = "  1 This is a tiny test excerpt in the format of WordNet 3.0 data.noun\n"
    rows = [
        ("00000001", "entity", []),
        ("00000002", "motor_vehicle automotive_vehicle", ["00000001"]),
        ("00000003", "car auto", ["00000002"]),
    ]
    text, offsets = header, {}
    for key, _, _ in rows:
        offsets[key] = None
    for key, words, parents in rows:
        offset = len(text.encode())
        offsets[key] = offset
        lemmas = words.split()
        ptrs = " ".join(f"@ {offsets[p]:08d} n 0000" for p in parents)
        word_part = " ".join(f"{w} 0" for w in lemmas)
        text += (
            f"{offset:08d} 06 n {len(lemmas):02x} {word_part} {len(parents):03d} {ptrs} | gloss\n"
        )
    (folder / "data.noun").write_text(text)
    return offsets


def test_wordnet_reader_on_format_excerpt(tmp_path):
    offsets = _write_data_noun(tmp_path)
    wn = WordNetNouns(find_wordnet_dir(str(tmp_path)))
    car = f"n{offsets['00000003']:08d}"
    assert wn.synset(car)[0] == ["car", "auto"]
    assert [name for _, name in wn.hypernym_chain(car)] == ["motor vehicle", "entity"]
    synsets = [Synset("car", wnids=[car]), Synset("road")]
    assert add_wordnet_hypernyms(synsets, wn) == 1
    assert synsets[0].parent == "motor vehicle" and synsets[0].hierarchy_source == "wordnet"
    assert synsets[1].parent is None and synsets[1].hierarchy_source == "none"
    with pytest.raises(LamflowError, match="not a WordNet noun id"):
        wn.synset("car")
    with pytest.raises(LamflowError, match="no WordNet data.noun"):
        find_wordnet_dir(str(tmp_path / "missing"))


def test_real_wordnet_if_installed():
    folder = find_wordnet_dir()
    if folder is None:
        pytest.skip("WordNet 3.0 database not installed (apt install wordnet-base)")
    chain = [name for _, name in WordNetNouns(folder).hypernym_chain("n02930766")]  # cab
    assert chain[:2] == ["car", "motor vehicle"] and chain[-1] == "entity"


LABELS = ["car", "automobile", "oak"]


def test_parse_groups_accepts_fenced_json_and_fills_forgotten_labels():
    answer = (
        "Sure! ```json\n"
        '{"groups": [{"name": "Car", "members": ["car", "Automobile"], "parent": "vehicle"}]}'
        "\n```"
    )
    groups = parse_groups(answer, LABELS)
    assert [(g.name, g.members, g.parent) for g in groups] == [
        ("car", ("car", "automobile"), "vehicle"),
        ("oak", ("oak",), ""),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        "I cannot help with that.",
        '{"groups": "car"}',
        '{"groups": [{"name": "x", "members": ["car", "truck"]}]}',  # invented label
        '{"groups": [{"name": "a", "members": ["car"]}, {"name": "b", "members": ["car"]}]}',
        '{"groups": [{"name": "", "members": ["car"]}]}',
        '{"groups": [{"name": "a", "members": [',  # cut off
    ],
)
def test_parse_groups_rejects_malformed(answer):
    assert parse_groups(answer, LABELS) is None


def test_parse_mapping():
    ok = parse_mapping('{"car": "Car", "oak": "unmapped", "zzz": "x"}', LABELS, ["car"], UNMAPPED)
    assert ok == {"car": "car", "oak": UNMAPPED}
    assert parse_mapping('{"car": "vehicle"}', LABELS, ["car"], UNMAPPED) is None
    assert extract_json("no json here") is None


class _FixedLLM:
    version = "fixed"

    def __init__(self, answer: str) -> None:
        self.answer, self.prompts = answer, []

    def complete(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answer


def _ranked() -> list[RankedLabel]:
    return [
        RankedLabel("automobile", 0.9, 0.9, 3, 1.0),
        RankedLabel("car", 0.8, 0.8, 3, 1.0),
        RankedLabel("oak", 0.5, 0.5, 1, 0.3),
    ]


def test_group_with_llm_uses_a_valid_answer():
    answer = json.dumps(
        {"groups": [{"name": "car", "members": ["car", "automobile"], "parent": "vehicle"}]}
    )
    llm = _FixedLLM(answer)
    synsets = group_with_llm(_ranked(), llm)
    assert "automobile" in llm.prompts[0]
    car = synsets[0]
    assert (car.name, car.synonyms, car.parent, car.score) == (
        "car",
        ["automobile"],
        "vehicle",
        0.9,
    )
    assert car.hierarchy_source == "llm" and synsets[1].name == "oak"


def test_malformed_llm_output_falls_back_with_warning(caplog):
    rows = [MappingRow("car", "car", 0.9), MappingRow("oak", UNMAPPED, 0.2, source="manual")]
    with caplog.at_level(logging.WARNING):
        assert group_with_llm(_ranked(), _FixedLLM("groups: car, automobile")) is None
        assert refine_mapping_with_llm(rows, ["car", "tree"], _FixedLLM("{bad")) == 0
    assert caplog.text.count("malformed") == 2
    assert [r.target for r in rows] == ["car", UNMAPPED]
    changed = refine_mapping_with_llm(rows, ["car", "tree"], _FixedLLM('{"car": "tree"}'))
    assert changed == 1 and (rows[0].target, rows[0].source) == ("tree", "llm")
    assert rows[1].source == "manual"  # a human's row is never sent or changed


def test_openai_compatible_backend_against_local_server(chat_server, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "secret")
    ChatHandler.requests = []
    llm = LLMS.get("openai")(chat_server, model="tiny", api_key_env="TEST_LLM_KEY")
    synsets = group_with_llm(_ranked(), llm)
    assert [s.name for s in synsets] == ["car", "oak"]
    request = ChatHandler.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "tiny" and request["body"]["temperature"] == 0


def test_openai_backend_errors_name_the_url():
    with pytest.raises(LamflowError, match="http"):
        LLMS.get("openai")("ftp://example")
    llm = LLMS.get("openai")("http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(LamflowError, match="127.0.0.1:9"):
        llm.complete("hi")
