"""Full-resolution labels from stride-s logits equal the argmax of the resized logits."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lam.upsample import (
    _corner_agreement,
    _resolve_cells,
    _resolve_pixels,
    label_and_confidence,
    source_index,
    upsampled_label_and_confidence,
)


def _smooth_logits(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Regions of one class with noisy logits: like a model's output, not white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, c, max(2, h // 6), max(2, w // 6), generator=g) * 6
    return (
        F.interpolate(coarse, size=(h, w), mode="bilinear")
        + torch.randn(b, c, h, w, generator=g) * 0.5
    )


def _reference(logits: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return label_and_confidence(F.interpolate(logits, size=size, mode="bilinear"))


@pytest.mark.parametrize(
    "low, size",
    [
        ((90, 120), (360, 480)),  # whole multiples: resolved per low-res cell
        ((12, 16), (36, 80)),  # odd and different scales per direction
        ((7, 9), (7, 9)),
        ((91, 121), (361, 483)),  # not whole multiples: resolved pixel by pixel
        ((5, 6), (37, 53)),
    ],
)
def test_label_is_the_argmax_of_the_resized_logits(low, size):
    logits = _smooth_logits(3, 6, *low, seed=sum(size))
    label, conf = upsampled_label_and_confidence(logits, size)
    want_label, want_conf = _reference(logits, size)
    assert label.shape == conf.shape == (3, *size)
    assert label.dtype == conf.dtype == torch.uint8
    assert (label != want_label).float().mean().item() < 1e-4  # float rounding on near-ties only
    error = (conf.int() - want_conf.int()).abs().float()
    assert error.mean().item() < 4.0


def test_confidence_is_exact_where_the_class_changes():
    # Two classes split down the middle: every pixel whose cell straddles the split gets the
    # resized logits' own softmax, so the edge stays uncertain (~0.5 at the split).
    logits = torch.zeros(1, 2, 4, 8)
    logits[0, 0, :, :4] = 4.0
    logits[0, 1, :, 4:] = 4.0
    label, conf = upsampled_label_and_confidence(logits, (16, 32))
    want_label, want_conf = _reference(logits, (16, 32))
    assert torch.equal(label, want_label)
    edge = slice(12, 20)  # output columns whose source cell spans low-res columns 3 and 4
    assert (conf[..., edge].int() - want_conf[..., edge].int()).abs().max().item() <= 1
    assert conf[..., 15:17].max().item() < 200  # uncertain at the split
    assert conf[..., :8].min().item() == conf[..., 24:].min().item() == 250  # 1/(1+e^-4)


def test_source_index_matches_torch_bilinear_resize():
    for out_size, in_size in [(360, 90), (17, 5), (5, 17), (8, 8)]:
        i0, i1, frac = source_index(out_size, in_size)
        ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, 1, -1)
        resized = F.interpolate(ramp, size=(1, out_size), mode="bilinear").flatten()
        ours = i0.float() + frac * (i1 - i0).float()
        assert torch.allclose(ours, resized, atol=1e-5)
        assert int(i0.min()) >= 0 and int(i1.max()) <= in_size - 1


def test_refuses_logits_that_are_not_4d():
    with pytest.raises(ValueError, match="logits must be"):
        upsampled_label_and_confidence(torch.zeros(2, 3, 4), (8, 8))


def test_noisy_maps_fall_back_to_the_dense_resize():
    # White noise: almost every cell straddles a class change, so the dense path runs and
    # both outputs match it exactly.
    logits = torch.randn(2, 5, 12, 16, generator=torch.Generator().manual_seed(3)) * 3
    label, conf = upsampled_label_and_confidence(logits, (48, 64))
    want_label, want_conf = _reference(logits, (48, 64))
    assert torch.equal(label, want_label) and torch.equal(conf, want_conf)


def test_cell_and_pixel_paths_resolve_the_same_pixels_alike():
    # Where the frame is a whole multiple of the grid both paths apply; every pixel the cell
    # path resolves that the pixel path also resolves gets the same label and probability.
    logits = _smooth_logits(2, 5, 10, 12, seed=7)
    agree = _corner_agreement(torch.softmax(logits, 1).argmax(1))
    assert agree.shape == (2, 11, 13)
    cells = _resolve_cells(logits, agree, (40, 36))
    assert cells is not None
    pixels = _resolve_pixels(logits, agree[:, 1:, 1:], source_index(40, 10), source_index(36, 12))
    by_cell = {int(i): (int(lb), float(p)) for i, lb, p in zip(*cells)}
    shared = [(int(i), int(lb), float(p)) for i, lb, p in zip(*pixels) if int(i) in by_cell]
    assert len(shared) > 0.9 * pixels[0].numel()  # they differ only on the border rows
    for i, lb, p in shared:
        assert by_cell[i][0] == lb and abs(by_cell[i][1] - p) < 1e-5
    assert _resolve_cells(logits, agree, (41, 36)) is None


def test_cell_path_sends_only_out_of_frame_pixels_to_the_spare_index():
    # Border cells reach half a cell past the frame. Their outside pixels all get B*H*W (the
    # caller's spare element), counted here cell by cell; every in-frame pixel appears once.
    logits = _smooth_logits(2, 5, 10, 12, seed=11)
    agree = _corner_agreement(torch.softmax(logits, 1).argmax(1))
    out_index, label, prob = _resolve_cells(logits, agree, (40, 36))  # 4 x 3 pixels a cell
    total = 2 * 40 * 36
    outside = 0
    for _, ci, cj in agree.logical_not().nonzero().tolist():
        rows = [(ci - 1) * 4 + 2 + k for k in range(4)]
        cols = [(cj - 1) * 3 + 1 + k for k in range(3)]
        outside += sum(not (0 <= r < 40 and 0 <= c < 36) for r in rows for c in cols)
    assert outside > 0  # the case is exercised
    assert out_index.numel() == label.numel() == prob.numel()
    assert int((out_index == total).sum()) == outside and int(out_index.max()) == total
    inside = out_index[out_index < total]
    assert inside.unique().numel() == inside.numel() == out_index.numel() - outside
