"""lam.source_fusion: the decoder rewrites give the network's own logits, on both networks."""

from __future__ import annotations

import copy

import pytest
import torch

from lam.cpu_fusion import fold_batchnorm
from lam.modeling.dicenet import DiCENetSegmentation, PyramidContextBlock
from lam.modeling.espnetv2 import EESP, ESPNetv2Segmentation
from lam.source_fusion import (
    BranchwisePyramidBlock,
    NormFoldedEESP,
    ShiftedGatedProjection,
    fold_decoder_norms,
    fold_eesp_norms,
    fuse_pyramid_blocks,
)


def _trained_like(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with non-trivial BatchNorm statistics and affines, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5)
    return net.eval()


def _rewritten(net: torch.nn.Module) -> tuple[torch.nn.Module, int, int]:
    fast = copy.deepcopy(net)
    with torch.no_grad():
        fold_batchnorm(fast)
        folded = fold_decoder_norms(fast)
        replaced = fuse_pyramid_blocks(fast)
        fold_eesp_norms(fast)
    return fast, folded, replaced


@pytest.mark.parametrize(
    "make", [lambda: ESPNetv2Segmentation(1.0, 20), lambda: DiCENetSegmentation(1.75, 20)]
)
def test_rewritten_decoder_gives_the_same_logits(make) -> None:
    net = _trained_like(make())
    fast, folded, replaced = _rewritten(net)
    assert folded == 3 and replaced == 4  # every decoder step and every pyramid block
    assert not any(isinstance(m, PyramidContextBlock) for m in fast.modules())
    assert sum(isinstance(m, ShiftedGatedProjection) for m in fast.modules()) == 3
    units = sum(isinstance(m, EESP) for m in net.modules())  # ESPNetv2's encoder only
    assert not any(isinstance(m, EESP) for m in fast.modules())
    assert sum(isinstance(m, NormFoldedEESP) for m in fast.modules()) == units
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        want = net(x)
        got = fast(x)
        got_cl = fast.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert want.std() > 0.01  # not a degenerate constant comparison
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_cl, want, atol=1e-4, rtol=1e-4)
    # the trained network is untouched
    assert any(isinstance(m, PyramidContextBlock) for m in net.modules())


def test_a_decoder_norm_with_a_negative_scale_is_left_in_place() -> None:
    """a * PReLU(u) = PReLU(a * u) only for a > 0: such a step keeps its BatchNorm."""
    net = _trained_like(ESPNetv2Segmentation(1.0, 20), seed=1)
    with torch.no_grad():
        net.bu_br_l3[0].weight[0] = -0.7
    fast, folded, _ = _rewritten(net)
    assert folded == 2 and isinstance(fast.bu_br_l3[0], torch.nn.BatchNorm2d)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), atol=1e-4, rtol=1e-4)


def test_branchwise_block_refuses_a_block_it_does_not_know() -> None:
    block = PyramidContextBlock(16, 8, 12).eval()
    block.merge_layer = torch.nn.Sequential(*list(block.merge_layer)[::-1])
    with pytest.raises(TypeError, match="pyramid merge layer"):
        BranchwisePyramidBlock(block)


def test_an_eesp_norm_with_a_zero_scale_is_left_in_place() -> None:
    """The fold divides by the previous branch's scale: a zero there keeps the BatchNorm."""
    net = _trained_like(ESPNetv2Segmentation(1.0, 20), seed=2)
    with torch.no_grad():
        net.base_net.level3[0].br_after_cat.bn.weight[3] = 0.0
    fast, _, _ = _rewritten(net)
    assert isinstance(fast.base_net.level3[0], EESP)
    assert isinstance(fast.base_net.level3[1], NormFoldedEESP)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), atol=1e-4, rtol=1e-4)


def test_rewrites_build_on_the_block_s_device() -> None:
    """The annotator moves the model to CUDA before rewriting it: every tensor the rewrite
    makes (the fuse conv's folded norm included) must be on the block's device. `meta`
    stands in for CUDA here."""
    block = _trained_like(PyramidContextBlock(16, 8, 12)).to("meta")
    with torch.no_grad():
        fold_batchnorm(block)  # the fuse conv's norm is folded first, as lam.cpu_fusion does
        fast = BranchwisePyramidBlock(block)
    assert all(t.device.type == "meta" for t in fast.state_dict().values())
    assert fast(torch.empty(2, 16, 20, 24, device="meta")).shape == (2, 12, 20, 24)
