import pytest
import torch
from torch.nn import functional as F

from lam.modeling.lam import block_mean_rgb
from lam.modeling.optou import OptOU, local_affinity, propagate


def test_affinity_rows_sum_to_one_and_shapes():
    guide = torch.rand(2, 3, 9, 11)
    aff = local_affinity(guide, radius=1, dilation=2, sigma=0.2)
    assert aff.shape == (2, 9, 9, 11)
    assert torch.allclose(aff.sum(1), torch.ones(2, 9, 11), atol=1e-5)


def test_propagate_matches_unfold_reference():
    probs = torch.softmax(torch.randn(1, 4, 7, 8), 1)
    aff = local_affinity(torch.rand(1, 3, 7, 8), radius=1, dilation=1, sigma=0.3)
    padded = torch.nn.functional.pad(probs, (1, 1, 1, 1), mode="replicate")
    neigh = torch.nn.functional.unfold(padded, 3).view(1, 4, 9, 7, 8)
    expected = (neigh * aff.unsqueeze(1)).sum(2)
    assert torch.allclose(propagate(probs, aff, 1, 1), expected, atol=1e-6)


def test_constant_probabilities_are_a_fixed_point():
    logits = torch.zeros(1, 3, 5, 6)
    out = OptOU(steps=3)(logits, torch.rand(1, 3, 5, 6))
    assert torch.allclose(out, logits, atol=1e-5)


def test_gradients_reach_alpha_and_eta():
    optou = OptOU(steps=2, radius=1)
    logits = torch.randn(1, 3, 6, 7)
    protos = torch.softmax(torch.randn(1, 3, 6, 7), 1)
    out = optou(logits, torch.rand(1, 3, 6, 7), protos)
    assert out.shape == logits.shape
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (1, 6, 7))).backward()
    assert optou.alpha.grad is not None and optou.alpha.grad.abs().sum() > 0
    assert optou.eta.grad is not None and optou.eta.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("frame", "size"),
    [((360, 480), (90, 120)), ((37, 53), (10, 14)), ((256, 256), (8, 8)), ((12, 9), (4, 3))],
)
def test_block_mean_rgb_matches_average_pooling(frame, size):
    # Divisible sizes take the integer block sums (int32 for 32x32 blocks), others adaptive
    # pooling; frames come as a channels-last view of (B, H, W, 3) or as plain NCHW.
    gen = torch.Generator().manual_seed(0)
    hwc = torch.randint(0, 256, (2, *frame, 3), dtype=torch.uint8, generator=gen)
    expected = F.adaptive_avg_pool2d(hwc.permute(0, 3, 1, 2).float(), size)
    for images in (hwc.permute(0, 3, 1, 2), hwc.permute(0, 3, 1, 2).contiguous()):
        got = block_mean_rgb(images, size)
        assert got.shape == (2, 3, *size) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    floats = hwc.permute(0, 3, 1, 2).float()  # not uint8: pooled as floats, same means
    torch.testing.assert_close(block_mean_rgb(floats, size), expected, rtol=0, atol=1e-4)
