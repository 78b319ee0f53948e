"""Backend `source_model`: a (zero-seed) segmentation model's confident pixels as seed labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import tasks.zero_shot_seeds as stage
from lam import pretrained
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_label
from lam.zero_shot import ZERO_SHOT
from lamflow.params import ModelParams, ZeroShotSeedsParams
from tests.conftest import make_scene
from tests.pipeline.helpers import TINY_CLASSES
from tests.zero_shot.tiny_models import save_tiny_lam

REPO = Path(__file__).resolve().parents[2]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
WEIGHTS = REPO.parent / "shared" / "weights" / "edgenets" / "espnetv2_s_2.0_city_1024x512.pth"
needs_shared = pytest.mark.skipif(
    not WEIGHTS.is_file() or not (CAMVID / "classes.json").is_file(),
    reason="no shared ESPNetv2 weights or CamVid (../shared)",
)
# The hand map of shared/weights/README.md (Cityscapes -> CamVid), as vocabulary.yaml rows
HAND = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "building",
    "fence": "fence", "pole": "pole", "traffic light": "sign", "traffic sign": "sign",
    "vegetation": "tree", "terrain": "tree", "sky": "sky", "person": "pedestrian",
    "rider": "bicyclist", "car": "car", "truck": "car", "bus": "car", "train": "car",
    "motorcycle": "bicyclist", "bicycle": "bicyclist", "background": "unmapped",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lam(tmp_path_factory.mktemp("lam") / "model")


def test_seeder_keeps_the_predictors_confident_pixels(tiny_model_dir: Path) -> None:
    from lam.predictor import Annotator
    from tasks.model_io import load_model

    net, config = load_model(str(tiny_model_dir))
    image = make_scene(0)[0]
    expected = Annotator(net, device="cpu").predict([image])[0]
    threshold = float(np.median(expected.confidence)) / 255.0  # about half the pixels go void
    build = ZERO_SHOT.get("source_model")
    names = ["sky", "road", "car"]
    seeder = build(
        names,
        255,
        model=net,
        model_names=names,
        model_version=config.version,
        min_confidence=threshold,
    )
    out = seeder.label_frame(image)
    sure = expected.confidence.astype(np.float32) / 255.0 >= threshold
    assert 0 < sure.mean() < 1
    np.testing.assert_array_equal(out.label[sure], expected.label[sure])
    assert (out.label[~sure] == 255).all() and (out.confidence[~sure] == 0).all()
    np.testing.assert_allclose(out.confidence[sure], expected.confidence[sure] / 255.0)
    assert seeder.version == f"source_model:{config.version}:c{threshold}"
    with pytest.raises(LamflowError, match="are not the class list"):
        build(["sky", "car", "road"], 255, model=net, model_names=names)
    with pytest.raises(LamflowError, match="needs a model"):
        build(["sky"], 255)


def test_a_backend_that_cannot_work_fails_before_any_frame(tmp_path, monkeypatch, capsys):
    params = ZeroShotSeedsParams(backend="source_model")
    with pytest.raises(LamflowError) as err:
        stage.check_models(params, ModelParams())  # default backbone efficientnet_lite0
    text = str(err.value)
    assert "\n" not in text and "zero_shot_seeds.source_backbone" in text
    assert "'efficientnet_lite0'" in text and "espnetv2_city" in text
    with pytest.raises(LamflowError, match="source_model_dir: no model at"):
        stage.check_models(params.model_copy(update={"source_model_dir": str(tmp_path)}))
    city = params.model_copy(update={"source_backbone": "espnetv2_city"})
    with pytest.raises(LamflowError, match="source_vocabulary: .* does not exist"):
        stage.check_models(city.model_copy(update={"source_vocabulary": str(tmp_path / "v.yaml")}))
    # offline (the test session sets HF_HUB_OFFLINE) with the weights in none of the places
    monkeypatch.setattr(pretrained, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("LAMFLOW_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("LAMFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LAMFLOW_OFFLINE", "1")
    with pytest.raises(LamflowError, match="espnetv2_s_2.0_city_1024x512.pth .* not found"):
        stage.check_models(city)
    # the command line says it in one line, before reading a frame
    from cli.main import main

    frames = tmp_path / "frames"
    frames.mkdir()
    (tmp_path / "classes.json").write_text(json.dumps(TINY_CLASSES))
    (tmp_path / "p.yaml").write_text("{}")
    args = ["stage", "zero_shot_seeds", "--params", str(tmp_path / "p.yaml")]
    args += ["--images", str(frames), "--classes", str(tmp_path / "classes.json")]
    args += ["--out", str(tmp_path / "o"), "--set", "zero_shot_seeds.backend=source_model"]
    code = main(args)
    err_text = capsys.readouterr().err.strip()
    assert code != 0 and len(err_text.splitlines()) == 1 and "source_backbone" in err_text


@needs_shared
def test_zero_seed_espnetv2_labels_camvid_frames(tmp_path: Path) -> None:
    """The real published network, mapped by a vocabulary file's rows, on 2 CamVid frames."""
    frames = tmp_path / "frames"
    frames.mkdir()
    stems = ["0001TP_006690", "0006R0_f02400"]
    for stem in stems:
        source = CAMVID / "train" / "images" / f"{stem}.jpg"
        (frames / f"{stem}.jpg").write_bytes(source.read_bytes())
    vocabulary = tmp_path / "vocabulary.yaml"
    rows = [
        {"synset": s, "target": t, "similarity": 1.0, "source": "manual"} for s, t in HAND.items()
    ]
    vocabulary.write_text(yaml.safe_dump({"source_mapping": {"cityscapes": {"rows": rows}}}))
    # the zero-seed model from the `model` section (a source network, 4:3 input for speed)
    model = ModelParams(backbone="espnetv2_city", backbone_options={"input_size": [288, 384]})
    params = ZeroShotSeedsParams(backend="source_model", source_vocabulary=str(vocabulary))
    classes = CAMVID / "classes.json"
    out = tmp_path / "zs"
    report = stage.zero_shot_seeds(
        str(frames), str(classes), str(out), params, progress=False, model=model
    )
    assert report["used"] == stems and report["version"].startswith("source_model:lam-")
    weights = report["model"]["weights"]
    assert weights["sha256"] == pretrained.EDGENETS["espnetv2_s_2.0_city"].sha256
    assert "non-commercial" in weights["licence"]
    assert report["model"]["class_map"]["origin"] == f"vocabulary {vocabulary}"
    ignore = ClassList.from_json(json.loads(classes.read_text())).ignore_index
    for stem in stems:
        label = decode_label((out / "labels" / f"{stem}.png").read_bytes())
        conf = decode_label((out / "confidence" / f"{stem}.png").read_bytes())
        truth = decode_label((CAMVID / "train" / "labels" / f"{stem}.png").read_bytes())
        assert (conf[label == ignore] == 0).all() and conf[label != ignore].min() >= 127
        keep = (label != ignore) & (truth != ignore)
        # measured 0.89 / 0.83 pixel accuracy on 91% / 95% of the pixels: no label was read
        assert keep.mean() > 0.7 and (label[keep] == truth[keep]).mean() > 0.75
    # a second run rebuilds nothing; a changed threshold relabels every frame
    again = stage.zero_shot_seeds(
        str(frames), str(classes), str(out), params, progress=False, model=model
    )
    assert again["skipped"] == stems and again["model"] == report["model"]
    stricter = params.model_copy(update={"min_confidence": 0.9})
    third = stage.zero_shot_seeds(
        str(frames), str(classes), str(out), stricter, progress=False, model=model
    )
    assert third["skipped"] == [] and third["version"].endswith(":c0.9")


def test_nightly_bootstraps_its_seed_set_from_source_model_seeds(tmp_path, tiny_model_dir):
    """pipeline.seed_source zero_shot + backend source_model: no human label is read."""
    from lamflow.params import load_params
    from tasks.models import ensure_model
    from tasks.seed_set import list_seeds
    from tests.pipeline.helpers import write_params

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(make_scene(i)[0]).save(frames / f"drv_{i:04d}.png")
    (tmp_path / "classes.json").write_text(json.dumps(TINY_CLASSES))
    root = tmp_path / "root"
    zs = {
        "backend": "source_model",
        "source_model_dir": str(tiny_model_dir),
        "min_confidence": 0.0,  # an untrained head is unsure everywhere: keep every pixel
        "min_mean_confidence": 0.0,
    }
    pipeline = {"seed_source": "zero_shot", "seed_images": str(frames), "seed_labels": ""}
    path = write_params(
        tmp_path / "p.yaml",
        str(root),
        tmp_path,
        pipeline=pipeline,
        train={"seeds": []},
        zero_shot_seeds=zs,
    )
    result = ensure_model(str(root), load_params(path), progress=False)
    seeds = list_seeds(str(root / "seeds"))
    assert [s["stem"] for s in seeds] == ["drv_0000", "drv_0001", "drv_0002"]
    assert {(s["source"], s["backend"]) for s in seeds} == {("zero_shot", "source_model")}
    assert all((root / "seeds" / "confidence" / f"{s['stem']}.png").exists() for s in seeds)
    report = json.loads((root / "zero_shot_seeds" / "report.json").read_text())
    assert report["model"]["model_dir"] == str(tiny_model_dir)
    trained = json.loads((Path(result["model"]) / "train_report.json").read_text())
    assert len(trained["seeds"]) == 3 and all("confidence_sha256" in s for s in trained["seeds"])
    # without a model dir the zero-seed model comes from the `model` section the flow passes
    other = tmp_path / "root2"
    path = write_params(
        tmp_path / "p2.yaml",
        str(other),
        tmp_path,
        pipeline=pipeline,
        train={"seeds": []},
        zero_shot_seeds={"backend": "source_model"},
        model={"backbone": "timm"},
    )
    with pytest.raises(LamflowError, match="model.backbone, now 'timm'"):
        ensure_model(str(other), load_params(path), progress=False)
    assert not (other / "seeds").exists()


def test_a_missing_model_vocabulary_is_named_before_any_frame_is_read(tmp_path: Path) -> None:
    from tasks.source_model import check_zero_seed_model

    missing = tmp_path / "nowhere.yaml"
    model = ModelParams(backbone="espnetv2_city", vocabulary=str(missing))
    with pytest.raises(LamflowError, match=f"model.vocabulary: {missing} does not exist"):
        check_zero_seed_model(ZeroShotSeedsParams(backend="source_model"), model)
