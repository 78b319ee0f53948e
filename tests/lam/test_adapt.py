import numpy as np
import pytest

from lam.adapt import AdaptSettings, adapt_to_frames
from lam.build import LamConfig, build_lam
from lam.errors import LamflowError
from lam.train import TrainSettings, train_head
from tests.lam.test_train import FAST, scene


def test_adapt_uses_only_frames_pixels(tiny_backbone, tiny_classes):
    model = build_lam(LamConfig(classes=tiny_classes), backbone=tiny_backbone)
    image, label = scene(0)
    train_head(model, [image], [label], 255, FAST)
    frames = [scene(s)[0] for s in (1, 2, 3)]
    settings = AdaptSettings(max_frames=2, pixels_per_frame=300, train=FAST)
    report = adapt_to_frames(model, [image], [label], frames, 255, settings)
    assert report.frames == 2
    assert 0 < report.pseudo_pixels <= 2 * label.size
    assert sum(report.pseudo_class_pixels) == report.pseudo_pixels
    assert report.seconds > 0 and np.isfinite(report.train.final_loss)


def test_adapt_needs_frames(tiny_backbone, tiny_classes):
    model = build_lam(LamConfig(classes=tiny_classes), backbone=tiny_backbone)
    image, label = scene(0)
    with pytest.raises(LamflowError):
        adapt_to_frames(model, [image], [label], [], 255, AdaptSettings(train=TrainSettings()))


def test_interpolate_mixes_the_seed_head_and_the_adapted_head(tiny_backbone, tiny_classes):
    """interpolate=0 gives back the seed-only head, 1 the adapted head, 0.5 their midpoint
    (so, for the linear adapter, the midpoint of their logits)."""
    import copy

    import torch

    base = build_lam(LamConfig(classes=tiny_classes), backbone=tiny_backbone)
    image, label = scene(0)
    train_head(base, [image], [label], 255, FAST)
    frames = [scene(s)[0] for s in (1, 2)]

    def head_after(weight: float) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(base)
        settings = AdaptSettings(pixels_per_frame=300, interpolate=weight, train=FAST)
        adapt_to_frames(model, [image], [label], frames, 255, settings)
        return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}

    seed_only = {k: v for k, v in base.state_dict().items() if not k.startswith("backbone.")}
    none, full, half = head_after(0.0), head_after(1.0), head_after(0.5)
    assert all(torch.equal(none[k], seed_only[k]) for k in seed_only)
    assert not torch.allclose(full["adapter.bias"], seed_only["adapter.bias"])
    for k, v in half.items():
        if v.is_floating_point():
            assert torch.allclose(v, (full[k] + seed_only[k]) / 2, atol=1e-6), k
    with pytest.raises(LamflowError, match="interpolate must be in"):
        adapt_to_frames(
            copy.deepcopy(base),
            [image],
            [label],
            frames,
            255,
            AdaptSettings(interpolate=1.5, train=FAST),
        )
