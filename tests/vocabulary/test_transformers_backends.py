"""clip / siglip / vlm taggers and the transformers LLM on tiny random models built offline."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.vocabulary.backends import LLMS, TAGGERS
from lam.vocabulary.filtering import RankedLabel
from lam.vocabulary.hierarchy import group_with_llm
from lam.vocabulary.vlm_tagger import split_labels

from .conftest import WORDS

CANDIDATES = ["car", "road", "tree", "sky"]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_taggers_score_candidates(kind, request, street_image):
    model_dir = request.getfixturevalue(f"tiny_{kind}_dir")
    tagger = TAGGERS.get(kind)(model_dir, CANDIDATES, views="both", top_k=2, min_prob=0.0)
    scores = tagger.scores(street_image)
    assert scores.shape == (5, len(CANDIDATES))  # full frame + 4 grid crops
    assert np.all((scores >= 0) & (scores <= 1))
    if kind == "clip":  # softmax over candidates
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    proposals = tagger.propose(street_image)
    assert set(proposals.labels) <= set(CANDIDATES)
    assert sum(len(v) for v in proposals.labels.values()) == 5 * 2  # top-2 in each view
    assert tagger.propose(street_image).labels == proposals.labels  # deterministic


def test_zero_shot_rejects_bad_inputs(tiny_clip_dir, tmp_path):
    cls = TAGGERS.get("clip")
    with pytest.raises(LamflowError, match="non-empty candidate"):
        cls(tiny_clip_dir, [" "])
    with pytest.raises(LamflowError, match="no config.json"):
        cls(tmp_path, CANDIDATES)


def test_vlm_samples_labels_with_token_probabilities(tiny_vlm_dir, street_image):
    tagger = TAGGERS.get("vlm")(tiny_vlm_dir, prompt="car", samples=3, max_new_tokens=12)
    answers = tagger.answers(street_image)
    assert len(answers) == 3
    for ids, probs in answers:
        assert len(ids) == len(probs) == 12 or 3 in ids  # stops early only at [EOS]
        assert all(0.0 < p <= 1.0 for p in probs)
    proposals = tagger.propose(street_image)
    for label, values in proposals.labels.items():
        assert set(label.split()) <= set(WORDS)
        assert 1 <= len(values) <= 3 and all(0 < v <= 1 for v in values)
    again = tagger.propose(street_image)
    assert again.labels == proposals.labels  # seeded per frame


def test_vlm_parse_combines_token_probabilities(tiny_vlm_dir):
    tagger = TAGGERS.get("vlm")(tiny_vlm_dir, samples=1, token_combine="product")
    vocab = tagger.tokenizer.get_vocab()
    ids = [vocab[w] for w in ["sky", "tree", ",", "road", ",", "sky", "tree"]] + [3]
    probs = [0.5, 0.4, 0.9, 0.8, 0.9, 0.2, 0.1, 1.0]
    labels = tagger.parse(ids, probs)
    # "sky tree" appears twice: the better answer (0.5 * 0.4) is kept, not 0.2 * 0.1.
    assert labels == pytest.approx({"sky tree": 0.2, "road": 0.8})


def test_split_labels_strips_bullets_and_rejects_junk():
    text = "1. Car, traffic light; - trees and sky.\n42, a very long label " + "x" * 50
    assert [lab for lab, _, _ in split_labels(text)] == ["car", "traffic light", "trees", "sky"]


def test_transformers_llm_random_output_falls_back_with_warning(tiny_causal_lm_dir, caplog):
    llm = LLMS.get("transformers")(tiny_causal_lm_dir, max_new_tokens=16)
    answer = llm.complete("group these labels: car , road")
    assert isinstance(answer, str) and answer == llm.complete("group these labels: car , road")
    ranked = [RankedLabel("car", 0.9, 0.9, 3, 1.0), RankedLabel("road", 0.5, 0.5, 2, 0.7)]
    with caplog.at_level(logging.WARNING):
        assert group_with_llm(ranked, llm) is None
    assert "malformed" in caplog.text


def test_transformers_llm_missing_dir(tmp_path):
    with pytest.raises(LamflowError, match="not found"):
        LLMS.get("transformers")(tmp_path / "nope")
