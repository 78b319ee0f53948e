"""ESPNetv2 as written here, the class map head, and the published weights loaded strictly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lam.build import build_backbone, build_lam
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.modeling.class_map import ClassMapAdapter, mapping_matrix
from lam.modeling.espnetv2 import ESPNetv2Segmentation, branch_dilations
from lam.modeling.source_network import CITYSCAPES_CLASSES, SourceNetworkBackbone
from lam.modeling.state_loading import load_state_strict
from lam.settings import LamConfig
from tests.hand_maps import CITYSCAPES_TO_CAMVID
from tests.lam.tiny_source import tiny_source_backbone, tiny_source_config

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / ".." / "shared" / "weights" / "edgenets"
CAMVID = ROOT / ".." / "shared" / "data" / "camvid"
needs_weights = pytest.mark.skipif(
    not (WEIGHTS / "espnetv2_s_2.0_city_1024x512.pth").is_file(), reason="no shared weights"
)
# The hand map of shared/weights/README.md (Cityscapes -> CamVid)
HAND = CITYSCAPES_TO_CAMVID


def test_branch_dilations_follow_the_receptive_limits():
    assert branch_dilations(4, 13) == [1, 2, 3, 4]
    assert branch_dilations(4, 7) == [1, 1, 2, 3]  # 9 is past the limit: a plain 3x3
    assert branch_dilations(4, 5) == [1, 1, 1, 2]


@pytest.mark.parametrize("width", [1.0, 1.5, 2.0])
def test_espnetv2_gives_logits_at_stride_two(width: float):
    net = ESPNetv2Segmentation(width, 20).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 20, 32, 48)
    assert torch.isfinite(out).all()


def test_espnetv2_refuses_sides_that_are_not_multiples_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        ESPNetv2Segmentation(1.0, 20)(torch.randn(1, 3, 60, 96))


def test_unknown_width_is_named():
    with pytest.raises(ValueError, match="width 0.5"):
        ESPNetv2Segmentation(0.5, 20)


def test_strict_loading_names_missing_unexpected_and_shapes():
    net = ESPNetv2Segmentation(1.0, 20)
    state = dict(net.state_dict())
    state.pop("bu_dec_l4.merge_layer.3.bias")
    state["extra.weight"] = torch.zeros(1)
    state["base_net.level1.conv.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(LamflowError) as err:
        load_state_strict(net, state, "test weights")
    text = str(err.value)
    assert "\n" not in text
    assert "bu_dec_l4.merge_layer.3.bias" in text and "extra.weight" in text
    assert "base_net.level1.conv.weight" in text and "(3, 3, 3, 3)" in text


def test_class_map_sums_probabilities_of_the_mapped_sources():
    prior = mapping_matrix({"a": "x", "b": "x", "c": "y"}, ("a", "b", "c", "d"), ["x", "y", "z"])
    head = ClassMapAdapter(4, 3, prior)
    logits = torch.log(torch.tensor([[0.3, 0.3, 0.1, 0.3]]))
    out = head.forward_points(logits)
    probs = torch.exp(out[0]) - head.floor
    assert torch.allclose(probs, torch.tensor([0.6, 0.1, 0.0]), atol=1e-5)
    # dense and pointwise agree
    dense = head([logits.view(1, 4, 1, 1).expand(1, 4, 2, 2)], (2, 2))
    assert torch.allclose(dense[0, :, 0, 0], out[0])


def test_class_map_rejects_unknown_names():
    with pytest.raises(ValueError, match="'q'"):
        mapping_matrix({"q": "x"}, ("a",), ["x"])
    with pytest.raises(ValueError, match="'nowhere'"):
        mapping_matrix({"a": "nowhere"}, ("a",), ["x"])


def test_estimate_shrinks_towards_the_prior_and_keeps_manual_columns():
    prior = mapping_matrix({"a": "x", "b": "y"}, ("a", "b"), ["x", "y"])
    fixed = torch.tensor([False, True])
    head = ClassMapAdapter(2, 2, prior, fixed)
    # every pixel is surely source 'a' or 'b', and every one is labelled 'y'
    feats = torch.tensor([[20.0, 0.0]] * 100 + [[0.0, 20.0]] * 100)
    ids = torch.ones(200, dtype=torch.long)
    head.estimate(feats, ids, prior_strength=100.0)
    # 'a': 100 pixels on y against a prior of 100 pixels on x -> half and half
    assert torch.allclose(head.mapping[:, 0], torch.tensor([0.5, 0.5]), atol=1e-4)
    assert torch.equal(head.mapping[:, 1], prior[:, 1])  # manual: seeds never move it
    head.estimate(feats, ids, prior_strength=float("inf"))
    assert torch.equal(head.mapping, prior)


def test_source_network_backbone_resizes_to_its_input_size():
    net = ESPNetv2Segmentation(1.0, 20)
    backbone = SourceNetworkBackbone(net, CITYSCAPES_CLASSES, "cityscapes", (64, 128)).eval()
    with torch.no_grad():
        taps = backbone(torch.randint(0, 256, (2, 3, 45, 60), dtype=torch.uint8))
    assert len(taps) == 1 and taps[0].shape == (2, 20, 32, 64)
    with pytest.raises(ValueError, match="multiples of 16"):
        SourceNetworkBackbone(net, CITYSCAPES_CLASSES, "cityscapes", (60, 128))


@needs_weights
def test_published_weights_load_and_label_camvid_with_the_hand_map():
    """The real file, strictly loaded, labels CamVid frames it never saw: a wiring error in
    our ESPNetv2 would fall far below the ~64 mIoU the authors' network gets here."""
    if not (CAMVID / "classes.json").is_file():
        pytest.skip("no CamVid")
    from PIL import Image

    from lam.metrics import confusion_matrix, scores_from_confusion

    classes = ClassList.from_json(json.loads((CAMVID / "classes.json").read_text()))
    config = LamConfig(
        classes=classes.to_json(),
        backbone="espnetv2_city",
        backbone_options={"width": 2.0, "input_size": [384, 768]},
        source_mapping=HAND,
        optou_steps=0,
        out_stride=2,
    )
    model = build_lam(config).eval()
    stems = ["0016E5_07959", "0016E5_08079", "0016E5_08159"]
    images = [np.array(Image.open(CAMVID / "val" / "images" / f"{s}.jpg")) for s in stems]
    labels = [np.array(Image.open(CAMVID / "val" / "labels" / f"{s}.png")) for s in stems]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(batch)
    logits = torch.nn.functional.interpolate(logits, size=labels[0].shape, mode="bilinear")
    pred = logits.argmax(1).numpy()
    conf = sum(
        confusion_matrix(p, lab, classes.num_classes, classes.ignore_index)
        for p, lab in zip(pred, labels)
    )
    miou = scores_from_confusion(conf).miou
    assert miou > 0.5, miou


@needs_weights
def test_registry_entries_find_their_weights_and_refuse_a_corrupt_file(tmp_path: Path):
    backbone = build_backbone("espnetv2_city", {"width": 1.0, "input_size": [64, 128]})
    assert backbone.provenance["sha256"].startswith("0918c833")
    assert "non-commercial" in backbone.provenance["licence"]
    bad = tmp_path / "espnetv2_s_1.0_city_1024x512.pth"
    bad.write_bytes(b"not the weights")
    # a corrupt explicit file is skipped (never loaded) and the shared copy is used
    again = build_backbone("espnetv2_city", {"width": 1.0, "weights": str(bad)})
    assert again.provenance["path"] != str(bad)
    with pytest.raises(LamflowError, match="width"):
        build_backbone("espnetv2_city", {"width": 0.5})


def test_inference_copy_folds_batchnorm_and_gives_the_same_logits():
    from lam.cpu_fusion import inference_backbone

    net = ESPNetv2Segmentation(1.0, 20)
    for m in net.modules():  # non-trivial statistics, as trained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    backbone = SourceNetworkBackbone(net, CITYSCAPES_CLASSES, "cityscapes", (64, 96)).eval()
    fast = inference_backbone(backbone)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert n_bn < sum(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    images = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(fast(images)[0], backbone(images)[0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("prior", [None, 100.0])
def test_training_fits_the_bias_and_keeps_or_estimates_the_map(prior: float | None):
    """Seeds fit the class map head's biases; the name map stays unless class_map_prior asks
    for it to be re-estimated from the seed pixels (manual rows never are)."""
    from lam.settings import TrainSettings
    from lam.train import train_head
    from tests.conftest import make_scene

    config = tiny_source_config(
        source_mapping={"sky": "sky", "road": "road", "car": "car", "truck": "car"},
        source_mapping_manual=["truck"],
    )
    model = build_lam(config, backbone=tiny_source_backbone())
    before = model.adapter.mapping_matrix().clone()
    scenes = [make_scene(i) for i in range(2)]
    settings = TrainSettings(class_map_prior=prior, scales=(1.0,), hflip=False)
    report = train_head(model, [s[0] for s in scenes], [s[1] for s in scenes], 255, settings)
    assert report.final_loss == report.final_loss  # finite: the bias was fitted
    assert model.adapter.bias.abs().sum() > 0
    after = model.adapter.mapping_matrix()
    truck = CITYSCAPES_CLASSES.index("truck")
    assert torch.equal(after[:, truck], before[:, truck])  # manual: never moved
    if prior is None:
        assert torch.equal(after, before)
    else:
        assert not torch.equal(after, before)
        assert torch.all(after.sum(0) <= 1 + 1e-5)


def test_a_mapped_class_no_seed_shows_keeps_a_neutral_bias():
    """Seeds without any 'car' pixel must not drive car's bias to -inf: the network still
    knows cars, and the map sends them to 'car'."""
    from lam.settings import TrainSettings
    from lam.train import train_head
    from tests.conftest import make_scene

    model = build_lam(tiny_source_config(), backbone=tiny_source_backbone())
    image, label = make_scene(0)
    label[label == 2] = 1  # no car pixel in the seed
    train_head(model, [image], [label], 255, TrainSettings(scales=(1.0,), hflip=False))
    bias = model.adapter.bias
    assert torch.isclose(bias[2], bias[:2].mean())


def test_bias_decay_shrinks_the_class_map_biases_towards_the_network():
    """class_map_bias_decay pulls the seed-fitted biases towards 0 (trust the network's own
    classes); 0 leaves them free."""
    from lam.settings import TrainSettings
    from lam.train import train_head
    from tests.conftest import make_scene

    config = tiny_source_config()
    scenes = [make_scene(i) for i in range(2)]
    norms = {}
    for decay in (0.0, 0.01, 10.0):
        model = build_lam(config, backbone=tiny_source_backbone())
        settings = TrainSettings(class_map_bias_decay=decay, scales=(1.0,), hflip=False)
        train_head(model, [s[0] for s in scenes], [s[1] for s in scenes], 255, settings)
        norms[decay] = float(model.adapter.bias.detach().norm())
    assert norms[0.0] > norms[0.01] > norms[10.0] and norms[10.0] < 0.05 * norms[0.0]
