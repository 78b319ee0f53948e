"""The offline imagenet-tagger on real CamVid frames, and the frame views it scores."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lam.vocabulary.backends import TAGGERS
from lam.vocabulary.imagenet_tagger import imagenet_classes
from lam.vocabulary.proposals import frame_views

STREET_CLASSES = {
    "streetcar", "cab", "trolleybus", "passenger car", "sports car", "street sign",
    "traffic light", "minivan", "moving van", "police van", "jeep", "convertible",
    "car wheel", "limousine", "pickup", "beach wagon", "racer", "parking meter", "minibus",
    "school bus", "tobacco shop", "cinema", "unicycle", "jinrikisha", "trailer truck",
}  # fmt: skip


def test_frame_views_shapes():
    image = np.zeros((6, 8, 3), np.uint8)
    assert [v.shape for v in frame_views(image, "full")] == [(6, 8, 3)]
    assert [v.shape for v in frame_views(image, "grid")] == [(3, 4, 3)] * 4
    assert len(frame_views(image, "both")) == 5
    with pytest.raises(ValueError, match="'sgc'"):
        frame_views(image, "sgc")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        frame_views(np.zeros((6, 8), np.uint8), "full")


def test_imagenet_class_table():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == ("n01440764", "tench")
    assert all(w.startswith("n") and len(w) == 9 for w, _ in classes)


@pytest.fixture(scope="module")
def camvid_frames(camvid) -> list[np.ndarray]:
    paths = sorted((camvid / "val" / "images").glob("*.jpg"))[:2]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_imagenet_tagger_on_camvid(camvid_frames):
    full = TAGGERS.get("imagenet-tagger")(views="full", top_k=3, min_prob=0.0)
    both = TAGGERS.get("imagenet-tagger")(views="both", top_k=3, min_prob=0.0, model=full.model)
    known = {name: wnid for wnid, name in imagenet_classes()}
    seen: set[str] = set()
    for image in camvid_frames:
        one = full.propose(image)
        assert len(one.labels) == 3 and all(len(v) == 1 for v in one.labels.values())
        many = both.propose(image)
        assert sum(len(v) for v in many.labels.values()) == 5 * 3  # 3 labels in 5 views
        for label, values in many.labels.items():
            assert all(0.0 < v <= 1.0 for v in values)
            assert many.wnids[label] == known[label]
        seen |= set(many.labels)
    # A street scene: the tagger proposes vehicles / street furniture, not fish.
    assert seen & STREET_CLASSES, sorted(seen)
    assert full.propose(camvid_frames[0]).labels == full.propose(camvid_frames[0]).labels
