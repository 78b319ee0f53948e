"""The fast inference path labels frames as the plain model forward does."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from lam.build import LamConfig, build_lam
from lam.predictor import Annotator, Prediction
from lam.upsample import label_and_confidence


def _reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top, label = logits.max(dim=1)
    conf = torch.exp(top - torch.logsumexp(logits, dim=1))
    return label.to(torch.uint8), (conf * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def test_label_and_confidence_matches_logsumexp_and_keeps_its_input():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 33, 41) * 4
    before = logits.clone()
    label, conf = label_and_confidence(logits)
    assert torch.equal(logits, before)
    want_label, want_conf = _reference(before)
    assert torch.equal(label, want_label)
    assert int((conf.int() - want_conf.int()).abs().max()) <= 1
    label2, conf2 = label_and_confidence(logits.clone(), inplace=True)
    assert torch.equal(label2, label) and torch.equal(conf2, conf)


def test_annotator_matches_the_plain_model_forward():
    torch.manual_seed(0)
    model = build_lam(LamConfig(classes=[{"name": n} for n in "abcd"])).eval()
    with torch.no_grad():
        model.adapter.apply(
            lambda m: [torch.nn.init.normal_(p, std=0.5) for p in m.parameters(recurse=False)]
        )
    annotator = Annotator(model, device="cpu", batch_size=2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    preds = annotator.predict(frames)
    with torch.inference_mode():
        batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
        logits = F.interpolate(model(batch), size=(90, 120), mode="bilinear", align_corners=False)
        want_label, want_conf = _reference(logits)
    label = np.stack([p.label for p in preds])
    conf = np.stack([p.confidence for p in preds])
    assert (label != want_label.numpy()).mean() < 0.005
    # Confidence is exact across class changes and interpolated inside a class (lam.upsample).
    conf_error = np.abs(conf.astype(int) - want_conf.numpy().astype(int))
    assert conf_error.mean() < 1.0
    # The model keeps its own (unfolded) backbone: training and saving see no change.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())


def test_adapter_fast_path_equals_resize_then_sum_of_every_tap():
    """Grouping taps by grid, channels-last resizes and in-place sums change no logit."""
    from lam.modeling.adapter import SemanticClassAdapter

    torch.manual_seed(0)
    channels, grids = (8, 16, 32, 64), [(40, 48), (20, 24), (10, 12), (10, 12)]
    adapter = SemanticClassAdapter(channels, 5, hidden=16)
    with torch.no_grad():
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.3)
        taps = [torch.randn(2, c, *g) for c, g in zip(channels, grids)]
        got = adapter(taps, (40, 48))
        total = sum(
            F.interpolate(F.conv2d(F.normalize(t, dim=1), proj.weight), (40, 48), mode="bilinear")
            for t, proj in zip(taps, adapter.proj)
        )
        want = adapter.hidden(F.relu(total + adapter.bias.view(1, -1, 1, 1)))
    assert got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-5)


def test_prediction_statistics_match_numpys_definitions():
    rng = np.random.default_rng(5)
    label = rng.integers(0, 6, size=(37, 53), dtype=np.uint8)
    label[0, :3] = 9  # an id past the classes counted is left out
    conf = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    pred = Prediction(label=label, confidence=conf)
    want = np.bincount(label.ravel(), minlength=10)[:6]
    np.testing.assert_array_equal(pred.class_counts(6), want)
    assert pred.class_counts(6).dtype == np.int64
    assert pred.mean_confidence == float(conf.mean()) / 255.0
    assert pred.low_confidence_fraction() == float((conf < 128).mean())
    assert pred.low_confidence_fraction(200) == float((conf < 200).mean())


def test_a_cpu_annotator_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr("lam.predictor.keep_freed_memory", lambda: calls.append(1) or True)
    Annotator(build_lam(LamConfig(classes=[{"name": n} for n in "ab"])), device="cpu")
    assert calls == [1]
