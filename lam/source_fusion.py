"""Inference rewrites of the source networks' blocks: same outputs, fewer passes on CPU.

The pyramid block of ESPNetv2's and DiCENet's decoder (`PyramidContextBlock`) concatenates
its n branches of p channels, normalises them (BatchNorm + PReLU), interleaves the channels
(a channel shuffle) and fuses them with a grouped 3x3 conv whose group j reads channel j of
every branch. On a 2-core CPU, at the last block's grid (192 x 384 for a 384 x 768 input,
n = 5, p = 10), the shuffle copied the volume twice (to a 5-d NCHW tensor and back to
channels-last) and oneDNN's grouped conv with 5 inputs per group took 59 ms a batch of 4,
against 17 ms for the same sum computed as 5 depth-wise convs (measured). Here, per branch:

- the BatchNorm is folded into the branch's depth-wise conv: a branch is conv then
  resampling (bilinear or average pooling), whose weights sum to one, so a per-channel
  a * y + b passes through the resampling unchanged;
- the branch gets its own slice of the PReLU's slopes;
- the grouped conv becomes one depth-wise conv per branch (its weights [:, k]), summed:
  group j's output is sum_k w[j, k] * branch_k[j], which is exactly that sum.

No concatenation, no shuffle.

Each decoder step then adds the upsampled block output y and the gated encoder projection
e * g, and normalises the sum (BatchNorm + PReLU) at the step's full grid. With the norm's
scale a > 0 (true of every published weight) the affine moves out of that pass: a into the
BatchNorm that ends the block producing y (a * PReLU(u) = PReLU(a * u) for a > 0, and the
bilinear upsampling is linear), a and the shift b into the projection as one
addcmul(b, e, a * g) in place of e * g. One full-grid pass less per step.

In ESPNetv2's encoder, each EESP unit sums its dilated branches hierarchically
(S_k = d_0 + ... + d_k), concatenates them and normalises the result. With the norm's
per-branch affine (a_k, b_k) and r_k = a_k / a_(k-1), the normalised sums follow one another:
T_0 = a_0 d_0 + b_0 and T_k = r_k T_(k-1) + a_k d_k + (b_k - r_k b_(k-1)), so a_k and the
shift fold into branch k's conv and the running sum's add becomes an addcmul: the
BatchNorm's pass over the unit's output is gone.

Exact up to float rounding; the trained modules are never changed (lam.cpu_fusion applies
this to a copy). Kept apart from lam/modeling/, which holds the modules themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lam.modeling.dice_layers import ChannelShuffle, ConvNormPReLU, NormPReLU
from lam.modeling.dicenet import GatedProjection, PyramidContextBlock, pyramid_branches
from lam.modeling.espnetv2 import EESP, eesp_tail


def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C,): an eval-mode BatchNorm as scale * x + shift."""
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    return scale, (bn.bias - bn.running_mean * scale).detach()


def _frozen_conv(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A depth-wise copy of `template`'s geometry with the given weight and bias."""
    conv = nn.Conv2d(
        weight.shape[0],
        weight.shape[0],
        template.kernel_size,
        template.stride,
        template.padding,
        template.dilation,
        groups=weight.shape[0],
        bias=bias is not None,
    )
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return conv


class BranchwisePyramidBlock(nn.Module):
    """A `PyramidContextBlock` in eval mode, computed branch by branch (see the module doc).

    (B, in_channels, H, W) -> (B, out_channels, H, W), equal to the block's output.
    """

    def __init__(self, block: PyramidContextBlock) -> None:
        super().__init__()
        norm, shuffle, fuse, project = block.merge_layer
        if not (
            isinstance(norm, NormPReLU)
            and isinstance(shuffle, ChannelShuffle)
            and isinstance(fuse, ConvNormPReLU)
        ):
            raise TypeError(f"unexpected pyramid merge layer: {block.merge_layer}")
        n, p = len(block.stages), block.stages[0].out_channels
        a, b = _affine(norm.br[0])
        slopes = norm.br[1].weight.detach()
        fuse_conv, fuse_norm, fuse_act = fuse.cbr
        if fuse_conv.weight.shape != (p, n, 3, 3) or shuffle.groups != n or a.numel() != p * n:
            raise ValueError(
                f"pyramid of {n} branches of {p} channels, shuffle of {shuffle.groups}, "
                f"{a.numel()} normalised channels, fuse weight {tuple(fuse_conv.weight.shape)}"
            )
        # the fuse conv's own BatchNorm, unless lam.cpu_fusion folded it already
        fa, fb = (
            _affine(fuse_norm)
            if isinstance(fuse_norm, nn.BatchNorm2d)
            else (
                torch.ones(p, dtype=fuse_conv.weight.dtype, device=fuse_conv.weight.device),
                torch.zeros(p, dtype=fuse_conv.weight.dtype, device=fuse_conv.weight.device),
            )
        )
        fuse_weight = fuse_conv.weight.detach() * fa.reshape(-1, 1, 1, 1)
        fuse_bias = fb if fuse_conv.bias is None else fuse_conv.bias.detach() * fa + fb
        stages, acts, fuses = [], [], []
        for k, conv in enumerate(block.stages):
            part = slice(k * p, (k + 1) * p)
            bias = b[part] if conv.bias is None else conv.bias.detach() * a[part] + b[part]
            stages.append(
                _frozen_conv(conv, conv.weight.detach() * a[part].reshape(-1, 1, 1, 1), bias)
            )
            act = nn.PReLU(p)
            act.weight = nn.Parameter(slopes[part].clone(), requires_grad=False)
            acts.append(act)
            fuses.append(
                _frozen_conv(fuse_conv, fuse_weight[:, k : k + 1], fuse_bias if k == 0 else None)
            )
        self.stages = nn.ModuleList(stages)
        self.acts = nn.ModuleList(acts)
        self.fuses = nn.ModuleList(fuses)
        self.fuse_act = fuse_act
        self.projection_layer = block.projection_layer
        self.project = project
        self.br = block.br

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        out: torch.Tensor | None = None
        for branch, act, fuse in zip(pyramid_branches(x, self.stages), self.acts, self.fuses):
            part = fuse(act(branch))
            out = part if out is None else out.add_(part)
        if out is None:
            raise ValueError("a pyramid block with no branch")
        out = self.project(self.fuse_act(out))
        return out if self.br is None else self.br(out)


def fuse_pyramid_blocks(module: nn.Module) -> int:
    """Replace every `PyramidContextBlock` under `module` (eval mode) by its rewrite.

    Mutates `module` in place; returns how many blocks were replaced.
    """
    return _replace_children(
        module, lambda m: BranchwisePyramidBlock(m) if isinstance(m, PyramidContextBlock) else None
    )


def _replace_children(module: nn.Module, rewrite: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap each submodule of `module` for `rewrite(submodule)` where that is not None.

    Mutates `module` in place; returns how many were swapped.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            new = rewrite(child) if child is not None else None
            if new is not None:
                parent._modules[name] = new
                replaced += 1
    return replaced


class ShiftedGatedProjection(nn.Module):
    """A `GatedProjection` followed by a per-channel affine: a * expansion(x) * gate(x) + b.

    (B, in_channels, H, W) -> (B, out_channels, H, W), one addcmul for the product and the
    affine (see the module doc).
    """

    def __init__(self, projection: GatedProjection, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.expansion_layer = projection.expansion_layer
        self.wt_layer = projection.wt_layer
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.wt_layer(x) * self.scale
        return torch.addcmul(self.shift, self.expansion_layer(x), gate)


def fold_decoder_norms(network: nn.Module) -> int:
    """Fold each decoder step's BatchNorm out of its full-grid pass (see the module doc).

    `network` names its decoder in `decoder_first` and `decoder_steps` (attribute names:
    projection, norm, block per step); a step whose norm has a
    scale <= 0, or whose producing block ends otherwise than in BatchNorm + PReLU, is left
    as it is. Mutates `network` in place; returns how many steps were folded.
    """
    folded = 0
    steps = getattr(network, "decoder_steps", ())
    blocks = [getattr(network, "decoder_first", "")] + [block for _, _, block in steps]
    for producer_name, (projection_name, norm_name, _) in zip(blocks, steps):
        producer = getattr(network, producer_name)
        projection = getattr(network, projection_name)
        norm = getattr(network, norm_name)
        tail = getattr(producer, "br", None)
        if not (
            isinstance(norm, nn.Sequential)
            and len(norm) == 2
            and isinstance(norm[0], nn.BatchNorm2d)
            and isinstance(norm[1], nn.PReLU)
            and isinstance(projection, GatedProjection)
            and isinstance(tail, NormPReLU)
            and isinstance(tail.br[0], nn.BatchNorm2d)
        ):
            continue
        scale, shift = _affine(norm[0])
        if bool((scale <= 0).any()):
            continue
        with torch.no_grad():
            tail.br[0].weight.mul_(scale)
            tail.br[0].bias.mul_(scale)
        setattr(network, projection_name, ShiftedGatedProjection(projection, scale, shift))
        setattr(network, norm_name, norm[1])
        folded += 1
    return folded


class NormFoldedEESP(nn.Module):
    """An `EESP` unit in eval mode with its after-concatenation BatchNorm folded into the
    branches (see the module doc). (B, c_in, H, W) -> the unit's output, equal to it."""

    def __init__(self, unit: EESP) -> None:
        super().__init__()
        a, b = _affine(unit.br_after_cat.bn)
        width = unit.spp_dw[0].conv.out_channels
        convs, ratios = [], []
        for k, branch in enumerate(unit.spp_dw):
            part = slice(k * width, (k + 1) * width)
            ak, shift = a[part], b[part]
            if k:
                before = slice(part.start - width, part.start)
                ratio = ak / a[before]
                shift = shift - ratio * b[before]
                ratios.append(ratio.reshape(-1, 1, 1))
            conv = branch.conv
            bias = shift if conv.bias is None else conv.bias.detach() * ak + shift
            convs.append(_frozen_conv(conv, conv.weight.detach() * ak.reshape(-1, 1, 1, 1), bias))
        self.branches = nn.ModuleList(convs)
        # ratios[k - 1] = a_k / a_(k-1), (branches - 1, width, 1, 1): 4-d, as a module moved
        # to channels-last needs its buffers
        self.register_buffer("ratios", torch.stack(ratios))
        self.proj_1x1 = unit.proj_1x1
        self.act_after_cat = unit.br_after_cat.act
        self.conv_1x1_exp = unit.conv_1x1_exp
        self.module_act = unit.module_act
        self.stride = unit.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused = [self.branches[0](reduced)]
        for branch, ratio in zip(self.branches[1:], self.ratios):
            fused.append(torch.addcmul(branch(reduced), ratio, fused[-1]))
        return eesp_tail(self.conv_1x1_exp(self.act_after_cat(torch.cat(fused, 1))), x, self)


def fold_eesp_norms(module: nn.Module) -> int:
    """Replace every `EESP` unit under `module` (eval mode) whose norm has no zero scale.

    For float32 only: the ratios of neighbouring branches' scales reach 1e11 in the published
    s = 2.0 weights (near-dead channels, whose shifts are as small), which float32 carries
    and float16 (CUDA autocast) would flush to zero; lam.cpu_fusion applies it on CPU only.
    Mutates `module` in place; returns how many units were replaced.
    """

    def rewrite(unit: nn.Module) -> nn.Module | None:
        if not isinstance(unit, EESP) or bool((_affine(unit.br_after_cat.bn)[0] == 0).any()):
            return None
        return NormFoldedEESP(unit)

    return _replace_children(module, rewrite)
