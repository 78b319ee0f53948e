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
