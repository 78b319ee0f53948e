"""Stage `train`: seeds from several folders or a seed set, and unlabeled frames."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lam.errors import LamflowError
from lamflow.params import ModelParams, TrainParams
from tasks.train import train
from tests.conftest import make_scene

FAST = TrainParams(iterations=5, scales=[1.0], pixels_per_view=300, optou_iterations=2)


def _folder(root: Path, prefix: str, seeds: range, labels: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    if labels:
        (root / "labels").mkdir()
    for i in seeds:
        image, label = make_scene(i)
        Image.fromarray(image).save(root / "images" / f"{prefix}_{i:04d}.png")
        if labels:
            Image.fromarray(label).save(root / "labels" / f"{prefix}_{i:04d}.png")
    return root


def _train(tmp: Path, classes: Path, out: str, **kwargs) -> dict:
    kwargs.setdefault("settings", FAST)
    return train(classes=str(classes), out=str(tmp / out), progress=False, **kwargs)


@pytest.fixture()
def classes(tmp_path: Path, tiny_classes: dict) -> Path:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(tiny_classes))
    return path


def test_seeds_from_two_folders(tmp_path: Path, classes: Path) -> None:
    a = _folder(tmp_path / "a", "drvA", range(2))
    b = _folder(tmp_path / "b", "drvB", range(2, 4))
    report = _train(
        tmp_path,
        classes,
        "model",
        images=[str(a / "images"), str(b / "images")],
        labels=[str(a / "labels"), str(b / "labels")],
        seeds=["drvA_0000", "drvB_0003"],
    )
    got = {s["stem"]: s["label_sha256"] for s in report["seeds"]}
    assert set(got) == {"drvA_0000", "drvB_0003"}
    # each stem's label came from the label folder paired with its image folder
    from lamflow.storage import sha256_bytes

    assert got["drvB_0003"] == sha256_bytes((b / "labels" / "drvB_0003.png").read_bytes())
    with pytest.raises(LamflowError, match="2 seed image folders but 3 label folders"):
        _train(
            tmp_path,
            classes,
            "bad",
            images=[str(a / "images"), str(b / "images")],
            labels=[str(a / "labels")] * 3,
            seeds=["drvA_0000"],
        )


def test_seed_set_directory(tmp_path: Path, classes: Path, tiny_classes: dict) -> None:
    from lam.classes import ClassList
    from tasks.seed_set import add_seed

    seeds = tmp_path / "seeds"
    for i in range(3):
        image, label = make_scene(10 + i)
        path = tmp_path / f"f{i}.png"
        Image.fromarray(image).save(path)
        add_seed(
            str(seeds),
            f"drvS_{i:04d}",
            path.read_bytes(),
            "png",
            label,
            ClassList.from_json(tiny_classes),
            {"source": "test"},
        )
    extra = _folder(tmp_path / "x", "drvX", range(1))
    report = _train(
        tmp_path,
        classes,
        "model",
        images=str(extra / "images"),
        labels=str(extra / "labels"),
        seeds=["drvX_0000", "drvS_0001"],  # drvS_0001 is in the set: taken from there once
        seed_set=str(seeds),
    )
    assert [s["stem"] for s in report["seeds"]] == [
        "drvS_0000",
        "drvS_0001",
        "drvS_0002",
        "drvX_0000",
    ]
    empty = tmp_path / "empty"
    (empty / "provenance").mkdir(parents=True)
    with pytest.raises(LamflowError, match="holds no seed"):
        _train(tmp_path, classes, "m2", images="", labels="", seeds=[], seed_set=str(empty))
    with pytest.raises(LamflowError, match="no seed frames given"):
        _train(tmp_path, classes, "m3", images=str(extra / "images"), labels="", seeds=[])


_ESPNETV2_WEIGHTS = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "edgenets"
    / "espnetv2_s_1.0_city_1024x512.pth"
)  # fmt: skip
_MODELS = {
    "imagenet_backbone": ModelParams(),
    # the driving-domain annotator's head (class map + biases), small and fast
    "source_network": ModelParams(
        backbone="espnetv2_city", backbone_options={"width": 1.0, "input_size": [64, 96]}
    ),
}


@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("imagenet_backbone", "self_train"),
        ("source_network", "self_train"),
        ("source_network", "norm_stats"),  # the backbone's statistics move, not the head
    ],
)
def test_unlabeled_frames_are_used_and_their_labels_never_read(
    tmp_path: Path, classes: Path, model: str, method: str
) -> None:
    if model == "source_network" and not _ESPNETV2_WEIGHTS.is_file():
        pytest.skip("no shared ESPNetv2 weights (../shared)")
    seeds = _folder(tmp_path / "seeds", "drvA", range(2))
    drop = _folder(tmp_path / "drop", "drvB", range(20, 26))
    common = {
        "images": str(seeds / "images"),
        "labels": str(seeds / "labels"),
        "seeds": ["drvA_0000", "drvA_0001"],
        "model": _MODELS[model],
    }
    common["settings"] = FAST.model_copy(update={"unlabeled_method": "none"})
    plain = _train(tmp_path, classes, "plain", **common)
    # method none does not read them at all
    unused = _train(tmp_path, classes, "none", unlabeled=[str(drop / "images")], **common)
    assert unused["unlabeled"]["method"] == "none" and unused["unlabeled"]["frames"] == []
    assert unused["model_version"] == plain["model_version"]
    common["settings"] = FAST.model_copy(update={"unlabeled_method": method})
    plain = _train(tmp_path, classes, "plain2", **common)
    with_drop = _train(tmp_path, classes, "drop1", unlabeled=[str(drop / "images")], **common)
    assert [f["stem"] for f in with_drop["unlabeled"]["frames"]] == [
        f"drvB_{i:04d}" for i in range(20, 26)
    ]
    # the drop's frames change the model: the unlabeled path is not a no-op
    assert with_drop["model_version"] != plain["model_version"]
    # labels beside the drop's frames: deleted, then replaced by garbage -> the same model
    shutil.rmtree(drop / "labels")
    gone = _train(tmp_path, classes, "drop2", unlabeled=[str(drop / "images")], **common)
    (drop / "labels").mkdir()
    for i in range(20, 26):
        noise = np.random.default_rng(i).integers(0, 255, (64, 96), dtype=np.uint8)
        Image.fromarray(noise).save(drop / "labels" / f"drvB_{i:04d}.png")
    garbage = _train(tmp_path, classes, "drop3", unlabeled=[str(drop / "images")], **common)
    assert with_drop["model_version"] == gone["model_version"] == garbage["model_version"]
    weights = [(tmp_path / m / "head.safetensors").read_bytes() for m in ("drop1", "drop3")]
    assert weights[0] == weights[1]


def test_unlabeled_frames_are_capped_evenly(tmp_path: Path) -> None:
    from tasks.frame_sources import load_unlabeled_frames

    a = _folder(tmp_path / "a", "drvA", range(10), labels=False)
    b = _folder(tmp_path / "b", "drvB", range(30), labels=False)
    (b / "images" / "drvB_0029.png").write_bytes(b"not a png")  # undecodable: skipped, named
    frames, records, skipped = load_unlabeled_frames(
        [str(a / "images"), str(b / "images")], 9, exclude={"drvB_0000"}
    )
    assert skipped == ["drvB_0029"]
    stems = [r["stem"] for r in records]
    assert len(frames) == len(records) == 8  # 9 picked (never more), one undecodable
    assert sum(s.startswith("drvA") for s in stems) == 2  # 10 of 39 frames -> 2.3 of 9
    assert "drvB_0000" not in stems and stems[-1] == "drvB_0024"  # 0029 was picked, skipped
    assert frames[0].shape == (64, 96, 3) and frames[0].dtype == np.uint8


def test_camvid_seeds_plus_an_unlabeled_drop_end_to_end(camvid: Path, tmp_path: Path) -> None:
    """Real weights, real frames, few steps: two 0006R0 seeds, four 0016E5 val frames as the
    drop (self-training reads their pixels only), then annotate and score two other frames."""
    from tasks.annotate import annotate
    from tasks.evaluate import evaluate

    drop = tmp_path / "drop"
    drop.mkdir()
    val = sorted((camvid / "val" / "images").glob("*.jpg"))
    for frame in val[:80:20]:
        (drop / frame.name).symlink_to(frame)
    settings = TrainParams(
        iterations=10,
        scales=[1.0],
        hflip=False,
        pixels_per_view=2000,
        optou_iterations=2,
        unlabeled_method="self_train",
    )
    report = train(
        str(camvid / "train" / "images"),
        str(camvid / "train" / "labels"),
        str(camvid / "classes.json"),
        ["0006R0_f01110", "0006R0_f02400"],
        str(tmp_path / "model"),
        settings=settings,
        progress=False,
        unlabeled=[str(drop)],
    )
    assert len(report["unlabeled"]["frames"]) == 4 and report["seconds"] > 0
    scored = [p.stem for p in val[90:92]]
    annotate(
        str(tmp_path / "model"),
        str(camvid / "val" / "images"),
        str(tmp_path / "pred"),
        stems=scored,
        progress=False,
    )
    scores = evaluate(
        str(tmp_path / "pred"), str(camvid / "val" / "labels"), str(camvid / "classes.json")
    )
    assert scores["n_images"] == 2
    # road and sky are easy from two seeds of another drive; a broken path scores near 0
    assert scores["per_class"]["road"]["iou"] > 50 and scores["per_class"]["sky"]["iou"] > 50


def test_unlabeled_folders_enter_the_model_key_only_when_read(
    tmp_path: Path, classes: Path
) -> None:
    """unlabeled_method none: new drops change nothing (no retrain, no relabel); self_train
    and norm_stats: the frames' bytes are part of the model's key."""
    from lamflow.params import Params
    from tasks.models import seed_key

    drop = _folder(tmp_path / "drop", "drvB", range(4), labels=False)
    other = _folder(tmp_path / "other", "drvC", range(4, 8), labels=False)
    fingerprint = [["drvA_0000", "a" * 64, "b" * 64]]
    data = {"classes": str(classes)}  # the key hashes the class list: not CamVid's here
    none = Params.model_validate({"data": data, "train": {"unlabeled_method": "none"}})
    keys = {seed_key(fingerprint, none, _key(none, [str(d / "images")])) for d in (drop, other)}
    assert len(keys) == 1 and keys == {seed_key(fingerprint, none)}
    # a setting the method or the head does not read leaves the key as it was
    other_blend = Params.model_validate(
        {"data": data, "train": {"unlabeled_method": "none", "norm_blend": 0.9}}
    )
    assert seed_key(fingerprint, other_blend) == seed_key(fingerprint, none)
    lite = {"backbone": "efficientnet_lite0", "backbone_options": {}}
    lite_keys = {
        seed_key(fingerprint, Params.model_validate({"data": data, "model": lite, "train": t}))
        for t in (
            {"unlabeled_method": "none"},
            {"unlabeled_method": "none", "class_map_bias_decay": 1.0},
        )
    }
    assert len(lite_keys) == 1
    blends = {
        seed_key(
            fingerprint,
            Params.model_validate(
                {"data": data, "train": {"unlabeled_method": "norm_stats", "norm_blend": b}}
            ),
        )
        for b in (0.5, 0.9)
    }
    assert len(blends) == 2  # norm_stats reads it
    for method in ("norm_stats", "self_train"):
        st = Params.model_validate({"data": data, "train": {"unlabeled_method": method}})
        first = seed_key(fingerprint, st, _key(st, [str(drop / "images")]))
        assert first != seed_key(fingerprint, st, _key(st, [str(other / "images")]))
    image, _ = make_scene(99)
    Image.fromarray(image).save(drop / "images" / "drvB_0001.png")  # a frame's bytes change
    assert first != seed_key(fingerprint, st, _key(st, [str(drop / "images")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LamflowError, match=f"no unlabeled frames .* in {empty}"):
        _key(st, [str(empty)])


def _key(params, folders: list[str]) -> list[list[str]]:
    from tasks.models import _unlabeled_key

    return _unlabeled_key(folders, params, set())


def test_model_vocabulary_rows_enter_the_model_key(tmp_path: Path, classes: Path) -> None:
    """A corrected row in model.vocabulary must retrain the nightly model (its key changes);
    other backbones ignore the file, and a missing file is named."""
    from lamflow.params import Params
    from tasks.models import seed_key

    vocabulary = tmp_path / "vocabulary.yaml"
    vocabulary.write_text("source_mapping: {cityscapes: {rows: []}}\n")
    fingerprint = [["drvA_0000", "a" * 64, "b" * 64]]
    model = {"backbone": "espnetv2_city", "vocabulary": str(vocabulary)}
    params = Params.model_validate({"data": {"classes": str(classes)}, "model": model})
    first = seed_key(fingerprint, params)
    assert seed_key(fingerprint, params) == first
    row = "{synset: terrain, target: road, similarity: 1.0, source: manual}"
    vocabulary.write_text(f"source_mapping: {{cityscapes: {{rows: [{row}]}}}}\n")
    assert seed_key(fingerprint, params) != first
    lite = params.model_copy(deep=True)
    lite.model.backbone = "efficientnet_lite0"
    vocabulary.unlink()
    assert seed_key(fingerprint, lite)  # ignored: no error, no read
    with pytest.raises(LamflowError, match=f"model.vocabulary: {vocabulary} does not exist"):
        seed_key(fingerprint, params)


def test_installing_wordnet_changes_a_name_mapped_model_key(
    tmp_path: Path, classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows proposed from names use WordNet where installed: installing it (or another
    version) must retrain the source-network model; without it keys stay as they were."""
    import lam.vocabulary.wordnet as wordnet
    from lamflow.params import Params
    from tasks.models import seed_key

    monkeypatch.setattr(wordnet, "SEARCH_DIRS", ())
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    fingerprint = [["drvA_0000", "a" * 64, "b" * 64]]
    data = {"classes": str(classes)}
    city = Params.model_validate({"data": data, "model": {"backbone": "espnetv2_city"}})
    lite = Params.model_validate({"data": data, "model": {"backbone": "efficientnet_lite0"}})
    without = seed_key(fingerprint, city), seed_key(fingerprint, lite)
    (tmp_path / "data.noun").write_text("00001740 03 n 01 entity 0 000 | that which exists\n")
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path))
    installed = seed_key(fingerprint, city)
    assert installed != without[0] and seed_key(fingerprint, lite) == without[1]
    (tmp_path / "data.noun").write_text("00001740 03 n 01 entity 0 000 | another version\n")
    assert seed_key(fingerprint, city) not in (installed, without[0])


def test_wordnet_enters_a_key_only_where_the_map_proposes_from_names(
    tmp_path: Path, classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vocabulary with a row for every source class reads no WordNet: its key ignores it.
    One that lacks a class proposes that row from names, so WordNet enters. The zero-seed
    labeller's key (source_model backend) follows the same rule."""
    import lam.vocabulary.wordnet as wordnet
    from lam.modeling.source_network import CITYSCAPES_CLASSES
    from lamflow.params import Params, ZeroShotSeedsParams
    from tasks.models import seed_key
    from tasks.source_model import zero_seed_model_key

    monkeypatch.setattr(wordnet, "SEARCH_DIRS", ())
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    fingerprint = [["drvA_0000", "a" * 64, "b" * 64]]

    def vocabulary(name: str, source_classes: tuple[str, ...]) -> Path:
        rows = ", ".join(
            f"{{synset: {c!r}, target: road, similarity: 1.0, source: manual}}"
            for c in source_classes
        )
        path = tmp_path / name
        path.write_text(f"source_mapping: {{cityscapes: {{rows: [{rows}]}}}}\n")
        return path

    full = vocabulary("full.yaml", CITYSCAPES_CLASSES)
    part = vocabulary("part.yaml", CITYSCAPES_CLASSES[:-2])
    data = {"classes": str(classes)}

    def keys() -> tuple[str, ...]:
        out = []
        for vocab in (full, part):
            model = {"backbone": "espnetv2_city", "vocabulary": str(vocab)}
            out.append(seed_key(fingerprint, Params.model_validate({"data": data, "model": model})))
            params = Params.model_validate({"data": data, "model": model})
            zs = ZeroShotSeedsParams(backend="source_model")
            out.append(json.dumps(zero_seed_model_key(zs, params.model), sort_keys=True))
        return tuple(out)

    without = keys()
    (tmp_path / "wn").mkdir()
    (tmp_path / "wn" / "data.noun").write_text("00001740 03 n 01 entity 0 000 | exists\n")
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "wn"))
    installed = keys()
    assert installed[:2] == without[:2]  # every row from the file
    assert installed[2] != without[2] and installed[3] != without[3]  # a row from names
    assert "wordnet_sha256" in installed[3]


def test_an_unset_model_vocabulary_keeps_earlier_model_keys() -> None:
    """`model.vocabulary` (added 2026-12-07) unset must not change the key of every model
    trained before it: it leaves the keyed fields when empty."""
    from tasks.source_model import model_key_fields

    fields = model_key_fields(ModelParams())
    assert "vocabulary" not in fields
    assert fields == {
        k: v for k, v in ModelParams().model_dump(mode="json").items() if k != "vocabulary"
    }
    assert model_key_fields(ModelParams(vocabulary="v.yaml"))["vocabulary"] == "v.yaml"


def test_where_the_weights_file_lies_is_not_in_the_model_key() -> None:
    """`model.weights` names a file checked against the registry's sha256: moving it must not
    retrain and relabel a fleet."""
    from tasks.source_model import model_key_fields

    keys = [model_key_fields(ModelParams(weights=w)) for w in ("", "/a/x.pth", "s3://b/x.pth")]
    assert keys[0] == keys[1] == keys[2]
    options = ModelParams().backbone_options
    moved = ModelParams(backbone_options={**options, "weights": "/c/x.pth"})
    assert model_key_fields(moved) == keys[0]  # the other place a path can be given
