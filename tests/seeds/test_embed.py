"""Frame embeddings: shape, unit norm, near-duplicates closer than different scenes."""

from __future__ import annotations

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.seeds.embed import embed_frames
from tests.conftest import make_scene


def test_embeddings_are_unit_rows_and_separate_scenes(tiny_backbone) -> None:
    a, _ = make_scene(0)
    a2 = np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8)  # the next frame, nearly equal
    b = np.ascontiguousarray(a[::-1, ::-1])  # a very different layout
    calls = []
    emb = embed_frames(tiny_backbone, [a, a2, b], short_side=64, progress=calls.append)
    assert emb.shape == (3, sum(tiny_backbone.channels)) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    assert emb[0] @ emb[1] > 0.99
    assert calls == [1, 1, 1]


def test_bad_frame_is_named(tiny_backbone) -> None:
    with pytest.raises(LamflowError, match="frame 0: expected"):
        embed_frames(tiny_backbone, [np.zeros((8, 8), np.uint8)])
