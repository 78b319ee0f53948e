"""Oracle tests: models whose answer is constructed, so the exact seed label is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lam.errors import LamflowError
from lam.zero_shot.detectors import Detection, select_detections
from lam.zero_shot.grounded_sam import GroundedSamSeeder
from lam.zero_shot.maskclip import MaskClipSeeder, class_text_embeddings, vote_in_masks
from lam.zero_shot.model_dir import check_model_dir
from lam.zero_shot.refinement import (
    PhraseTable,
    class_phrases,
    parse_pre_refinement,
    parse_presence,
    refine_phrases,
)
from lam.zero_shot.result import ScoredMask, paint_masks, probabilities_to_label
from lam.zero_shot.templates import MASKCLIP_TEMPLATES

NAMES = ["sky", "road", "sidewalk", "car"]
VOID = 11


def box_mask(shape, box):
    x0, y0, x1, y1 = box
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_paint_masks_higher_score_wins_overlap():
    shape = (20, 30)
    a = ScoredMask(box_mask(shape, (0, 0, 20, 10)), 1, 0.6)
    b = ScoredMask(box_mask(shape, (10, 5, 30, 20)), 3, 0.9)
    label, conf = paint_masks([b, a], shape, VOID)
    assert (label[box_mask(shape, (10, 5, 30, 20))] == 3).all()
    assert (label[0:5, 0:20] == 1).all() and (label[5:10, 0:10] == 1).all()
    assert (label[10:, :10] == VOID).all() and (conf[label == VOID] == 0).all()
    assert conf[7, 15] == pytest.approx(0.9) and conf[2, 2] == pytest.approx(0.6)


def test_probabilities_to_label_voids_unsure_pixels():
    probs = np.zeros((2, 2, 2), np.float32)
    probs[0] = [[0.9, 0.4], [0.2, 0.5]]
    probs[1] = 1 - probs[0]
    label, conf = probabilities_to_label(probs, [5, 7], VOID, 0.55)
    assert label.tolist() == [[5, 7], [7, VOID]]
    assert conf[1, 1] == 0 and conf[0, 0] == pytest.approx(0.9)


def test_select_detections_nms_and_top_points():
    boxes = np.array(
        [[10, 10, 50, 50], [12, 12, 50, 50], [100, 10, 140, 40], [20, 20, 30, 30], [0, 0, 5, 5]],
        np.float32,
    )
    # phrases: car, road. Query 1 duplicates 0 (NMS), query 3 is a weaker car inside box 0,
    # query 4 is below threshold.
    scores = np.array([[0.9, 0.1], [0.8, 0.1], [0.2, 0.7], [0.5, 0.0], [0.1, 0.2]], np.float32)
    dets = select_detections(boxes, scores, ["car", "road"], 0.3, nms_iou=0.5, top_points=2)
    assert [(d.phrase, round(d.score, 2)) for d in dets] == [
        ("car", 0.9),
        ("road", 0.7),
        ("car", 0.5),
    ]
    car = dets[0]
    np.testing.assert_allclose(car.points, [[30, 30], [31, 31]])  # its centre, then query 1
    assert car.box.tolist() == [10, 10, 50, 50]


def test_refinement_parsing_is_defensive():
    assert parse_pre_refinement("no json here", NAMES) is None
    got = parse_pre_refinement(
        '```json\n{"sidewalk": ["Pavement", "sidewalk"], "car": "automobile", '
        '"road": ["pavement"], "unicorn": ["x"]}\n```',
        NAMES,
    )
    # a phrase given for two classes stays with the first in class order (road before
    # sidewalk); unknown classes are ignored
    assert got == {"road": ["pavement"], "sidewalk": ["sidewalk"], "car": ["automobile"]}
    assert parse_presence('{"present": ["Car", "tree"]}', NAMES) == ["car"]
    assert parse_presence('{"present": []}', NAMES) == []  # an answer: nothing present
    assert parse_presence('{"classes": ["car"]}', NAMES) is None
    assert parse_presence('{"present": ["Traffic Light"]}', ["traffic_light"]) == ["traffic_light"]
    assert class_phrases(["traffic_light"]) == [["traffic light"]]
    with pytest.raises(LamflowError, match="unknown classes"):
        class_phrases(NAMES, {"tree": ["tree"]})


class FakeLLM:
    version = "fake-llm"

    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def complete(self, prompt):
        self.prompts.append(prompt)
        for key, answer in self.answers.items():
            if key in prompt:
                return answer
        return "I don't know"


class BoxDetector:
    """Answers known boxes for known phrases; records what it was asked."""

    version = "oracle-detector"

    def __init__(self, answers):
        self.answers, self.asked = answers, []

    def detect(self, image, phrases):
        self.asked.append(list(phrases))
        return [
            Detection(p, np.array(box, np.float32), s, np.array([[box[0] + 1, box[1] + 1]]))
            for p, (box, s) in self.answers.items()
            if p in phrases
        ]


class BoxSam:
    """A SAM whose mask is exactly the prompt box; records the prompts."""

    version = "oracle-sam"

    def __init__(self):
        self.prompts = []

    def masks(self, image, boxes, points):
        self.prompts.append((boxes, points))
        return [(box_mask(image.shape[:2], [int(v) for v in b]), 1.0) for b in boxes]


def test_grounded_sam_oracle_pre_and_post_refinement():
    image = np.zeros((40, 60, 3), np.uint8)
    llm = FakeLLM(
        {
            "open-set object detector": json.dumps({"sidewalk": ["pavement"]}),
            "Which target classes": json.dumps({"present": ["sidewalk", "car"]}),
        }
    )
    phrases, source = refine_phrases(NAMES, class_phrases(NAMES), llm)
    assert source == "llm" and phrases[2] == ["pavement"] and phrases[0] == ["sky"]
    detector = BoxDetector(
        {
            "pavement": ((0, 20, 60, 40), 0.8),
            "car": ((10, 10, 30, 30), 0.9),
            "sky": ((0, 0, 60, 10), 0.99),  # never asked: the LLM says no sky
        }
    )
    sam = BoxSam()
    seeder = GroundedSamSeeder(
        NAMES, VOID, detector, sam, PhraseTable(NAMES, phrases), llm=llm, phrase_source=source
    )
    out = seeder.label_frame(image)
    assert detector.asked == [["pavement", "car"]]
    expected = np.full((40, 60), VOID, np.uint8)
    expected[20:40, 0:60] = 2  # pavement -> sidewalk (post-refinement)
    expected[10:30, 10:30] = 3  # car wins the overlap by score
    np.testing.assert_array_equal(out.label, expected)
    assert out.confidence[15, 15] == pytest.approx(0.9)
    assert out.confidence[35, 50] == pytest.approx(0.8)
    assert out.confidence[5, 5] == 0
    assert out.details["present"] == ["sidewalk", "car"]
    assert [d["class"] for d in out.details["detections"]] == ["sidewalk", "car"]
    # SAM got each box with its detector points
    boxes, points = sam.prompts[0]
    assert [b.tolist() for b in boxes] == [[0, 20, 60, 40], [10, 10, 30, 30]]
    assert points[1].tolist() == [[11, 11]]


def test_grounded_sam_without_llm_queries_every_class():
    detector = BoxDetector({"road": ((0, 0, 10, 10), 0.5)})
    seeder = GroundedSamSeeder(
        NAMES, VOID, detector, BoxSam(), PhraseTable(NAMES, class_phrases(NAMES))
    )
    out = seeder.label_frame(np.zeros((10, 20, 3), np.uint8))
    assert detector.asked == [["sky", "road", "sidewalk", "car"]]
    assert (out.label[:, :10] == 1).all() and (out.label[:, 10:] == VOID).all()
    assert out.details["present_source"] == "all classes (no llm)"


def test_manual_phrases_win_and_starved_classes_are_reported():
    llm = FakeLLM({"open-set object detector": json.dumps({"road": ["street"], "car": ["road"]})})
    default = class_phrases(NAMES, {"sidewalk": ["pavement"]})
    phrases, source = refine_phrases(NAMES, default, llm, manual=["sidewalk"])
    assert "- sidewalk" not in llm.prompts[0]  # a person's phrases are not asked about
    assert phrases[2] == ["pavement"] and phrases[1] == ["street"]
    # the LLM gave "road" to car; road itself kept "street", so no class is starved here
    assert source == "llm"
    phrases, source = refine_phrases(
        NAMES,
        class_phrases(NAMES),
        FakeLLM({"open-set object detector": json.dumps({"sky": ["road"]})}),
    )
    assert phrases[1] == ["road"] and "never queried): road" in source
    assert PhraseTable(NAMES, phrases).queries([1]) == []


def test_unusable_llm_answer_falls_back_to_class_names():
    phrases, source = refine_phrases(NAMES, class_phrases(NAMES), FakeLLM({}))
    assert phrases == [[n] for n in NAMES] and "unusable" in source


def test_phrase_table_embedding_fallback():
    def embed(texts):
        out = np.zeros((len(texts), 4), np.float32)
        for i, t in enumerate(texts):
            out[i, {"automobile": 3, "car": 3, "sky": 0, "road": 1, "sidewalk": 2}[t]] = 1
        return out

    table = PhraseTable(NAMES, class_phrases(NAMES), embed)
    assert table.class_of("Car ") == 3
    assert table.class_of("automobile") == 3  # not in the table: nearest phrase
    assert PhraseTable(NAMES, class_phrases(NAMES)).class_of("automobile") is None


class OracleClip:
    """Text embedding of a sentence = one-hot of the class name it contains; patch features =
    class `inside` in a known rectangle of the patch grid, class `outside` elsewhere."""

    version = "oracle-clip"
    logit_scale = 100.0

    def __init__(self, names, grid, rect, inside, outside):
        self.names, self.grid, self.rect = names, grid, rect
        self.inside, self.outside = inside, outside
        self.sentences = 0

    def encode_text(self, sentences):
        self.sentences += len(sentences)
        out = torch.zeros(len(sentences), len(self.names))
        for i, s in enumerate(sentences):
            hits = [k for k, n in enumerate(self.names) if f" {n}" in f" {s}"]
            out[i, hits[0]] = 1.0
        return out

    def patch_features(self, image):
        gh, gw = self.grid
        feats = torch.zeros(gh, gw, len(self.names))
        feats[..., self.outside] = 1.0
        r0, c0, r1, c1 = self.rect
        feats[r0:r1, c0:c1] = 0.0
        feats[r0:r1, c0:c1, self.inside] = 1.0
        return feats


def test_maskclip_oracle_rectangle_becomes_the_class():
    names = [["sky"], ["road"], ["car"]]
    clip = OracleClip(["sky", "road", "car"], grid=(4, 6), rect=(1, 2, 3, 5), inside=2, outside=1)
    seeder = MaskClipSeeder(names, VOID, clip, min_confidence=0.5)
    assert clip.sentences == 3 * len(MASKCLIP_TEMPLATES) == 3 * 85
    image = np.zeros((64, 96, 3), np.uint8)  # 16 px per patch
    out = seeder.label_frame(image)
    # patch rows 1-2, cols 2-4 -> pixels y 16..48, x 32..80; bilinear upsampling blurs only
    # within half a patch of the edge, so the cores are exact
    assert (out.label[20:44, 36:76] == 2).all()
    assert (out.label[:12, :] == 1).all() and (out.label[:, :28] == 1).all()
    assert out.confidence[30, 50] > 0.99


def test_maskclip_sam_vote_takes_the_mask_majority():
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0] = 0.8
    probs[1] = 0.2
    probs[:, 0, 0] = [0.1, 0.9]  # one pixel disagrees inside the mask
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    voted = vote_in_masks(probs, [mask])
    assert voted[0, 0, 0] == pytest.approx((0.8 * 3 + 0.1) / 4)
    assert voted[:, 3, 3].tolist() == pytest.approx([0.8, 0.2])

    class OneMask:
        version = "oracle-masks"

        def generate(self, image):
            m = np.zeros(image.shape[:2], bool)
            m[:, :48] = True  # left half is one SAM mask
            return [m]

    clip = OracleClip(["sky", "road"], grid=(4, 6), rect=(0, 0, 4, 1), inside=0, outside=1)
    seeder = MaskClipSeeder([["sky"], ["road"]], VOID, clip, OneMask(), min_confidence=0.5)
    out = seeder.label_frame(np.zeros((64, 96, 3), np.uint8))
    # patch column 0 says sky, columns 1-2 road: the whole mask (columns 0-2) becomes road
    assert (out.label[:, :48] == 1).all()
    plain = MaskClipSeeder([["sky"], ["road"]], VOID, clip, None, min_confidence=0.5)
    assert (plain.label_frame(np.zeros((64, 96, 3), np.uint8)).label[:, :8] == 0).all()


def test_class_text_embeddings_average_templates():
    clip = OracleClip(["sky", "road"], (1, 1), (0, 0, 0, 0), 0, 1)
    emb = class_text_embeddings(clip.encode_text, [["sky"], ["road", "sky"]], ["a {}.", "the {}"])
    assert emb[0].tolist() == pytest.approx([1.0, 0.0])
    assert emb[1].tolist() == pytest.approx([2**-0.5, 2**-0.5])


def test_model_dir_errors_are_one_line(tmp_path):
    with pytest.raises(LamflowError, match="needs a local model directory"):
        check_model_dir("", "maskclip", ("clip",))
    with pytest.raises(LamflowError, match="does not exist"):
        check_model_dir(tmp_path / "nope", "maskclip", ("clip",))
    with pytest.raises(LamflowError, match="no config.json"):
        check_model_dir(tmp_path, "maskclip", ("clip",))
    (tmp_path / "config.json").write_text('{"model_type": "owlv2"}')
    with pytest.raises(LamflowError, match="holds a 'owlv2' model; expected model_type 'clip'"):
        check_model_dir(tmp_path, "maskclip", ("clip",))
