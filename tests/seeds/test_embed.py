"""Frame embeddings: shape, unit norm, near-duplicates closer than different scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lam.errors import LamflowError
from lam.seeds.embed import embed_frames, embed_frames_and_patches
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


def test_patches_come_from_the_same_pass_on_the_last_taps(tiny_backbone) -> None:
    a, _ = make_scene(0)
    b = np.ascontiguousarray(a[::-1, ::-1])
    frames, patches = embed_frames_and_patches(
        tiny_backbone, [a, b], short_side=64, grid=(2, 3), patch_taps=2
    )
    assert np.array_equal(frames, embed_frames(tiny_backbone, [a, b], short_side=64))
    assert patches.shape == (2, 6, sum(tiny_backbone.channels[-2:]))
    assert patches.dtype == np.float32
    assert np.allclose(np.linalg.norm(patches, axis=2), 1.0, atol=1e-5)


class _ColourTaps(torch.nn.Module):
    """A stand-in backbone whose taps are the frame's colours (3 ch) and their mean (1 ch)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x / 255.0, x.mean(dim=1, keepdim=True) / 255.0]


def test_patches_are_grid_cells_of_the_last_taps() -> None:
    """Left half red, right half blue, a (1, 2) grid: with the last tap only each cell is its
    half's colour; with both taps the colour and brightness parts are weighted equally."""
    frame = np.zeros((8, 16, 3), np.uint8)
    frame[:, :8, 0] = 200
    frame[:, 8:, 2] = 200
    _, colour = embed_frames_and_patches(
        _ColourTaps(), [frame], short_side=0, grid=(1, 2), patch_taps=1
    )
    assert colour.shape == (1, 2, 1) and np.allclose(colour, 1.0)
    _, both = embed_frames_and_patches(
        _ColourTaps(), [frame], short_side=0, grid=(1, 2), patch_taps=2
    )
    h = np.sqrt(0.5)
    assert np.allclose(both[0], [[h, 0, 0, h], [0, 0, h, h]], atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"grid": (0, 3)}, "patch grid must be"), ({"patch_taps": 0}, "patch_taps must be")],
)
def test_bad_patch_settings_are_named(tiny_backbone, kwargs, match) -> None:
    a, _ = make_scene(0)
    with pytest.raises(LamflowError, match=match):
        embed_frames_and_patches(tiny_backbone, [a], **kwargs)
