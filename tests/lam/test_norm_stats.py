"""lam.norm_stats: a backbone's BatchNorm statistics blended towards the target frames'; the
model artefact carries them and still names the registry's backbone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lam.artifact import WEIGHTS_FILE, backbone_fingerprint, model_from_files, model_to_files
from lam.build import build_lam
from lam.errors import LamflowError
from lam.norm_stats import _same_shape_batches, adapt_norm_statistics
from lam.predictor import Annotator
from lam.settings import LamConfig, TrainSettings
from lam.train import train_head
from tests.conftest import make_scene
from tests.lam.tiny_source import tiny_source_backbone, tiny_source_config


class _TwoLayers(nn.Module):
    """uint8 (B, 3, H, W) -> 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN: statistics that are
    easy to compute by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
            bn.num_batches_tracked.fill_(7)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(images.float() / 255)))))


def _frames(n: int, shape: tuple[int, int] = (6, 8), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def _by_hand(net: _TwoLayers, frames: list[np.ndarray], batch: int) -> dict[str, torch.Tensor]:
    """AdaBN's statistics computed directly: per batch, each layer's input statistics with the
    layers before it normalised by that batch's own; then averaged over the batches."""
    sums: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(frames), batch):
        x = torch.from_numpy(np.stack(frames[start : start + batch])).permute(0, 3, 1, 2)
        h = net.conv1(x.float() / 255)
        stats = [h]
        h = F.relu(F.batch_norm(h, None, None, net.bn1.weight, net.bn1.bias, training=True))
        stats.append(net.conv2(h))
        for name, t in zip(("bn1", "bn2"), stats):
            sums.setdefault(f"{name}.running_mean", []).append(t.mean((0, 2, 3)))
            sums.setdefault(f"{name}.running_var", []).append(t.var((0, 2, 3), unbiased=True))
    return {k: torch.stack(v).mean(0) for k, v in sums.items()}


@torch.no_grad()
def test_blend_one_gives_the_frames_statistics_and_a_half_blend_the_midpoint():
    source = _TwoLayers()
    frames = _frames(5)  # batches of 4 and 1
    expected = _by_hand(source, frames, 4)
    full = copy.deepcopy(source)
    keys = adapt_norm_statistics(full, frames, 1.0, batch_size=4)
    assert sorted(keys) == sorted(expected)
    state, before = full.state_dict(), source.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(state[key], before[key])  # the check can fail
    half = copy.deepcopy(source)
    adapt_norm_statistics(half, frames, 0.5, batch_size=4)
    for key, value in expected.items():
        torch.testing.assert_close(
            half.state_dict()[key], 0.5 * value + 0.5 * before[key], rtol=1e-5, atol=1e-6
        )
    for key in before:  # learned scales and shifts, counters: untouched
        if key not in expected:
            assert torch.equal(state[key], before[key]), key
    assert not full.training and not full.bn1.training
    assert full.bn1.momentum == source.bn1.momentum == 0.1


def test_blend_zero_or_no_frame_changes_nothing():
    source = _TwoLayers()
    for frames, blend in ((_frames(3), 0.0), ([], 0.5)):
        net = copy.deepcopy(source)
        assert adapt_norm_statistics(net, frames, blend) == []
        for key, value in source.state_dict().items():
            assert torch.equal(net.state_dict()[key], value)


def test_bad_inputs_are_named():
    net = _TwoLayers()
    with pytest.raises(LamflowError, match="norm_blend must be in \\[0, 1\\], got 1.5"):
        adapt_norm_statistics(net, _frames(1), 1.5)
    with pytest.raises(LamflowError, match="Conv2d has no BatchNorm"):
        adapt_norm_statistics(nn.Conv2d(3, 3, 1), _frames(1), 0.5)
    with pytest.raises(
        LamflowError, match=r"frame 1 must be \(H, W, 3\) uint8, got \(6, 8, 3\) float32"
    ):
        adapt_norm_statistics(net, [_frames(1)[0], np.zeros((6, 8, 3), np.float32)], 0.5)


def test_a_failure_midway_restores_the_source_statistics():
    class Failing(_TwoLayers):
        calls = 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:
                raise OSError("device lost")
            return super().forward(images)

    net = Failing()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(OSError, match="device lost"):
        adapt_norm_statistics(net, _frames(8), 1.0, batch_size=4)
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value), key
    assert net.bn1.momentum == 0.1 and not net.bn1.training


def test_frames_of_different_sizes_are_batched_apart():
    a, b = _frames(1, (6, 8))[0], _frames(1, (4, 4))[0]
    assert _same_shape_batches([a, a, b, a, a, a], 2) == [[0, 1], [2], [3, 4], [5]]
    net = _TwoLayers()
    assert adapt_norm_statistics(net, [a, b, a], 1.0)  # no stacking error


def _zero_seed_model(
    method: str,
) -> tuple[torch.nn.Module, LamConfig]:
    config = tiny_source_config()
    model = build_lam(config, backbone=tiny_source_backbone())
    drop = [make_scene(i)[0] for i in range(3)]
    train_head(model, [], [], 255, TrainSettings(unlabeled_method=method), unlabeled=drop)
    return model, config


def test_adapted_statistics_travel_with_the_head_and_the_registry_backbone_still_matches():
    adapted, config = _zero_seed_model("norm_stats")
    plain, plain_config = _zero_seed_model("none")
    assert len(adapted.adapted_backbone_buffers) > 50 and plain.adapted_backbone_buffers == ()
    files = model_to_files(adapted, config)
    from safetensors.torch import load

    carried = sorted(k for k in load(files[WEIGHTS_FILE]) if k.startswith("backbone."))
    assert carried == sorted(f"backbone.{k}" for k in adapted.adapted_backbone_buffers)
    assert all(k.endswith(("running_mean", "running_var")) for k in carried)
    plain_files = model_to_files(plain, plain_config)
    assert not [k for k in load(plain_files[WEIGHTS_FILE]) if k.startswith("backbone.")]
    # both name the registry's backbone: the adapted one by every tensor it does not carry
    registry = tiny_source_backbone()
    assert plain_config.extra["backbone_fingerprint"] == backbone_fingerprint(registry)
    assert config.extra["backbone_fingerprint"] == backbone_fingerprint(
        registry, adapted.adapted_backbone_buffers
    )
    assert backbone_fingerprint(adapted.backbone) != backbone_fingerprint(registry)

    loaded, _ = model_from_files(files, backbone=tiny_source_backbone())
    assert loaded.adapted_backbone_buffers == tuple(sorted(adapted.adapted_backbone_buffers))
    for key in adapted.adapted_backbone_buffers:
        assert torch.equal(loaded.backbone.state_dict()[key], adapted.backbone.state_dict()[key])
    frames = [make_scene(7)[0]]
    a = Annotator(adapted, device="cpu").predict(frames)[0]
    b = Annotator(loaded, device="cpu").predict(frames)[0]
    c = Annotator(plain, device="cpu").predict(frames)[0]
    np.testing.assert_array_equal(a.confidence, b.confidence)
    assert not np.array_equal(a.confidence, c.confidence)  # the statistics did change labels
    # and saving the loaded model again keeps them (the review loop reloads and resaves)
    assert (
        model_to_files(loaded, LamConfig.from_dict(dict(config.__dict__)))[WEIGHTS_FILE]
        == (files[WEIGHTS_FILE])
    )
    other = tiny_source_backbone()
    with torch.no_grad():
        other.network.base_net.level1.conv.weight.mul_(2)
    with pytest.raises(LamflowError, match="differs from the one the model was trained on"):
        model_from_files(files, backbone=other)


def test_zero_seeds_need_a_class_map_head(tiny_backbone, tiny_classes):
    model = build_lam(LamConfig(classes=tiny_classes), backbone=tiny_backbone)
    with pytest.raises(LamflowError, match="no seed frame: only a class map head"):
        train_head(model, [], [], 255, TrainSettings())


def test_only_batchnorm_statistics_may_travel_with_the_head():
    """A head file carrying any other backbone tensor would swap a frozen weight past the
    fingerprint: refused, naming the key."""
    from safetensors.torch import load, save

    adapted, config = _zero_seed_model("norm_stats")
    files = model_to_files(adapted, config)
    state = load(files[WEIGHTS_FILE])
    state["backbone.network.base_net.level1.conv.weight"] = torch.zeros(1)
    bad = {**files, WEIGHTS_FILE: save(state)}
    with pytest.raises(LamflowError, match=r"no BatchNorm statistics: backbone\.network\.base"):
        model_from_files(bad, backbone=tiny_source_backbone())


def test_statistics_are_adapted_once_per_model():
    adapted, _ = _zero_seed_model("norm_stats")
    with pytest.raises(LamflowError, match="already adapted"):
        train_head(
            adapted,
            [],
            [],
            255,
            TrainSettings(unlabeled_method="norm_stats"),
            unlabeled=[make_scene(9)[0]],
        )
