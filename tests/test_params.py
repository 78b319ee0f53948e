"""params.yaml validation: typed sections, named errors, and no drift from the lam defaults."""

from dataclasses import fields
from pathlib import Path

import pytest

from lam.adapt import AdaptSettings
from lam.build import LamConfig
from lam.errors import LamflowError
from lam.train import TrainSettings
from lamflow.params import AdaptParams, ModelParams, TrainParams, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train.seeds and params.model.backbone == "espnetv2_city"


def test_sections_mirror_the_library_dataclasses():
    adapt = {f.name for f in fields(AdaptSettings)} - {"train"}
    assert set(AdaptParams.model_fields) == adapt
    train = {f.name for f in fields(TrainSettings)}
    assert set(TrainParams.model_fields) - {"seeds", "unlabeled_frames"} == train
    # the class map's rows come from a vocabulary file (model.vocabulary names it) or the
    # class names; the weights file is found at build time (model.weights: where first)
    derived = {"classes", "version", "extra", "source_mapping", "source_mapping_manual"}
    model = {f.name for f in fields(LamConfig)} - derived
    assert set(ModelParams.model_fields) - {"weights", "vocabulary"} == model
    defaults = TrainParams()
    for f in fields(TrainSettings):
        value = getattr(defaults, f.name)
        assert (
            tuple(value) if isinstance(value, list) else value
        ) == f.default or f.name == "scales"


def test_unknown_and_mistyped_keys_are_named():
    with pytest.raises(LamflowError, match=r"train\.iteratons: unknown key"):
        parse_params({"train": {"iteratons": 3}})
    with pytest.raises(LamflowError, match=r"model\.out_stride: Input should be a valid integer"):
        parse_params({"model": {"out_stride": "four"}})
    with pytest.raises(LamflowError, match=r"bogus: unknown key"):
        parse_params({"bogus": {}})
    with pytest.raises(LamflowError, match="top level must be a mapping"):
        parse_params([1, 2])  # type: ignore[arg-type]


def test_overrides_are_typed(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  seed: 1\n")
    params = load_params(path, ["train.seed=7", "train.scales=[1.0]", "model.use_prototypes=true"])
    assert params.train.seed == 7 and params.train.scales == [1.0]
    assert params.model.use_prototypes is True
    with pytest.raises(LamflowError, match="section.key=value"):
        load_params(path, ["seed=3"])
    with pytest.raises(LamflowError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_review_backfill_names_its_drops_and_rejects_nonsense() -> None:
    from lamflow.params import ReviewParams

    drops = ["d1", "d2", "d3"]
    assert ReviewParams(backfill="all").backfill_drops(drops) == drops
    assert ReviewParams(backfill="none").backfill_drops(drops) == []
    assert ReviewParams(backfill="last 2").backfill_drops(drops) == ["d2", "d3"]
    with pytest.raises(LamflowError, match="review.backfill: .*'last two'"):
        parse_params({"review": {"backfill": "last two"}})


def test_unlabeled_method_is_checked_against_the_library_list():
    with pytest.raises(LamflowError, match=r"train\.unlabeled_method: .*'magic' is not one of"):
        parse_params({"train": {"unlabeled_method": "magic"}})
    assert parse_params({"train": {"unlabeled_method": "self_train"}}).train.unlabeled_method
