"""Model artefact: save -> load gives the same predictions; mismatches are refused."""

import hashlib
import json

import numpy as np
import pytest

from lam.artifact import CONFIG_FILE, WEIGHTS_FILE, model_from_files, model_to_files
from lam.build import LamConfig, build_lam
from lam.errors import LamflowError
from lam.predictor import Annotator
from lam.train import TrainSettings, train_head
from tests.conftest import make_scene


@pytest.fixture()
def trained(tiny_backbone, tiny_classes):
    config = LamConfig(classes=tiny_classes)
    model = build_lam(config, backbone=tiny_backbone)
    img, lab = make_scene(0)
    train_head(model, [img], [lab], 255, TrainSettings(iterations=3, scales=(1.0,), hflip=False))
    return model, config


def test_round_trip_predicts_identically(trained, tiny_backbone):
    model, config = trained
    files = model_to_files(model, config)
    assert set(files) == {CONFIG_FILE, WEIGHTS_FILE}
    saved = json.loads(files[CONFIG_FILE])
    assert saved["version"].startswith("lam-") and saved["backbone"] == "efficientnet_lite0"
    assert "backbone_fingerprint" in saved["extra"]
    loaded, cfg2 = model_from_files(files, backbone=tiny_backbone)
    assert cfg2.version == config.version
    frames = [make_scene(5)[0], make_scene(6)[0]]
    a = Annotator(model, device="cpu").predict(frames)
    b = Annotator(loaded, device="cpu").predict(frames)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.label, pb.label)
        np.testing.assert_array_equal(pa.confidence, pb.confidence)


def test_version_is_a_content_hash(trained):
    model, config = trained
    v1 = json.loads(model_to_files(model, config)[CONFIG_FILE])["version"]
    v2 = json.loads(model_to_files(model, config)[CONFIG_FILE])["version"]
    assert v1 == v2
    with np.errstate(all="ignore"):
        model.adapter.bias.data += 1.0
    v3 = json.loads(model_to_files(model, config)[CONFIG_FILE])["version"]
    assert v3 != v1


def test_version_ignores_where_the_weights_file_lay(trained):
    """`backbone_options.weights` says where this machine found the file, kept as a loading
    hint; the same model saved from another path has the same version (only the hint
    differs), so moving the file relabels nothing."""
    model, config = trained
    files = model_to_files(model, config)
    plain = json.loads(files[CONFIG_FILE])["version"]
    # a model without the hint keeps the version the code before this change gave it
    config.version = ""
    before = hashlib.sha256(files[WEIGHTS_FILE] + config.to_json().encode()).hexdigest()[:12]
    assert plain == f"lam-{before}"
    versions = set()
    for path in ("/a/espnetv2.pth", "/b/espnetv2.pth"):
        config.backbone_options = {**config.backbone_options, "weights": path}
        saved = json.loads(model_to_files(model, config)[CONFIG_FILE])
        assert saved["backbone_options"]["weights"] == path
        versions.add(saved["version"])
    assert versions == {plain}


def test_missing_files_and_other_backbone_are_refused(trained, tiny_backbone):
    import timm
    import torch

    from lam.modeling.backbone import EfficientNetBackbone

    model, config = trained
    files = model_to_files(model, config)
    with pytest.raises(LamflowError, match="lacks head.safetensors"):
        model_from_files({CONFIG_FILE: files[CONFIG_FILE]}, backbone=tiny_backbone)
    torch.manual_seed(1234)  # a different random backbone from the session's tiny one
    other = EfficientNetBackbone(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    with pytest.raises(LamflowError, match="differs from the one the model was trained on"):
        model_from_files(files, backbone=other)
    bad = dict(files)
    bad[CONFIG_FILE] = json.dumps({**json.loads(files[CONFIG_FILE]), "bogus": 1}).encode()
    with pytest.raises(LamflowError, match="unknown keys"):
        model_from_files(bad, backbone=tiny_backbone)
