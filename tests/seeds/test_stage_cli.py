"""End to end on a few synthetic frames through the CLI: select-seeds -> prompts -> seed-masks
-> review-export/review-import (Label Studio, CVAT, Cityscapes) -> export-coco; stage details."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cli.main import main
from lam.errors import LamflowError


def _prompts_from_truth(label: np.ndarray) -> dict:
    """A simulated human: two clicks on sky and road, a box on the car."""
    regions = []
    for cid, name in enumerate(["sky", "road"]):
        ys, xs = np.nonzero(label == cid)
        pick = [len(ys) // 3, 2 * len(ys) // 3]
        regions.append({"class": name, "positive": [[int(xs[i]), int(ys[i])] for i in pick]})
    ys, xs = np.nonzero(label == 2)
    regions.append(
        {
            "class": "car",
            "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        }
    )
    return {"version": 1, "regions": regions}


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "select_seeds": {"budget": 2, "short_side": 0, "dedupe_threshold": 0.999},
                "seed_masks": {"backbone": "", "segmenter": "region_grow"},
            }
        )
    )
    return path


def test_cli_end_to_end(
    scene_folder: Path, params_file: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    d = scene_folder
    common = ["--params", str(params_file)]
    seeds = tmp_path / "out" / "seeds.yaml"
    assert (
        main(
            [
                "select-seeds",
                "--images",
                str(d / "images"),
                "--out",
                str(seeds),
                "--labels",
                str(d / "labels"),
                "--classes",
                str(d / "classes.json"),
                *common,
            ]
        )
        == 0
    )
    doc = yaml.safe_load(seeds.read_text())
    stems = [s["stem"] for s in doc["seeds"]]
    assert len(stems) >= 2 and doc["seeds"][0]["rank"] == 1
    assert doc["coverage"]["uncovered"] == [] and "adds_classes" in doc["seeds"][0]
    assert len(list((tmp_path / "out" / "embeddings").glob("*.npy"))) == 6

    # Re-running reads every embedding from the cache: no backbone is built.
    import tasks.select_seeds as stage

    monkeypatch.setattr(stage, "build_backbone", lambda *a, **k: pytest.fail("cache missed"))
    again = stage.select_seeds(
        str(d / "images"),
        str(seeds),
        stage.SelectSeedsParams(budget=2, short_side=0, dedupe_threshold=0.999),
        progress=False,
        labels=str(d / "labels"),
        classes=str(d / "classes.json"),
    )
    assert [s["stem"] for s in again["seeds"]] == stems

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "classes.json").write_text((d / "classes.json").read_text())
    for stem in stems:
        label = np.asarray(Image.open(d / "labels" / f"{stem}.png"))
        (prompts / f"{stem}.json").write_text(json.dumps(_prompts_from_truth(label)))
    masks = tmp_path / "seed_labels"
    capsys.readouterr()
    assert (
        main(
            [
                "seed-masks",
                "--images",
                str(d / "images"),
                "--prompts",
                str(prompts),
                "--out",
                str(masks),
                *common,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["written"]) == sorted(stems)
    for stem in stems:
        pred = np.asarray(Image.open(masks / f"{stem}.png"))
        truth = np.asarray(Image.open(d / "labels" / f"{stem}.png"))
        labelled = pred != 255
        assert labelled.mean() > 0.8 and (pred[labelled] == truth[labelled]).mean() > 0.9
    # Unchanged inputs: skipped on re-run.
    assert (
        main(
            [
                "seed-masks",
                "--images",
                str(d / "images"),
                "--prompts",
                str(prompts),
                "--out",
                str(masks),
                *common,
            ]
        )
        == 0
    )
    assert sorted(json.loads(capsys.readouterr().out)["skipped"]) == sorted(stems)

    cls = ["--classes", str(d / "classes.json")]
    for fmt, name in [
        ("labelstudio", "tasks.json"),
        ("cityscapes", "labels.zip"),
        ("cvat", "t.xml"),
    ]:
        exported = tmp_path / "review" / name
        assert (
            main(
                [
                    "review-export",
                    "--images",
                    str(d / "images"),
                    "--out",
                    str(exported),
                    "--format",
                    fmt,
                    "--seeds",
                    str(seeds),
                    "--labels",
                    str(masks),
                    *cls,
                ]
            )
            == 0
        )
        back = tmp_path / f"back_{fmt}"
        assert main(["review-import", "--src", str(exported), "--out", str(back), *cls]) == 0
        for stem in stems:
            ours = np.asarray(Image.open(masks / f"{stem}.png"))
            theirs = np.asarray(Image.open(back / f"{stem}.png"))
            if fmt == "cvat":  # polygons fill void holes inside a region
                assert (theirs[ours != 255] == ours[ours != 255]).all()
            else:
                assert (theirs == ours).all(), (fmt, stem)
    assert (tmp_path / "review" / "labeling_config.xml").exists()

    coco = tmp_path / "coco.json"
    assert main(["export-coco", "--labels", str(masks), "--out", str(coco), *cls]) == 0
    data = json.loads(coco.read_text())
    assert len(data["images"]) == len(stems) and data["annotations"]


def test_malformed_prompt_file_is_one_clear_error(
    scene_folder: Path, params_file: Path, capsys
) -> None:
    d = scene_folder
    prompts = d / "prompts"
    prompts.mkdir()
    (prompts / "drive1_0002.json").write_text(
        json.dumps({"regions": [{"class": "car", "box": [50, 10, 20, 30]}]})
    )
    code = main(
        [
            "seed-masks",
            "--images",
            str(d / "images"),
            "--prompts",
            str(prompts),
            "--out",
            str(d / "m"),
            "--classes",
            str(d / "classes.json"),
            "--params",
            str(params_file),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "frame 'drive1_0002', regions[0] (class 'car'): box: need x0 < x1" in err
    assert not (d / "m").exists()


def test_review_export_needs_frames(scene_folder: Path, capsys) -> None:
    d = scene_folder
    code = main(
        [
            "review-export",
            "--images",
            str(d / "images"),
            "--out",
            str(d / "x.xml"),
            "--classes",
            str(d / "classes.json"),
        ]
    )
    assert code == 2 and "nothing to export" in capsys.readouterr().err


def test_qc_flagged_frames_are_exported(scene_folder: Path) -> None:
    from tasks.review import review_export

    d = scene_folder
    (d / "review.json").write_text(json.dumps([{"stem": "drive1_0004", "reasons": ["void"]}]))
    out = review_export(
        str(d / "images"),
        str(d / "t.json"),
        str(d / "classes.json"),
        "labelstudio",
        flagged=str(d / "review.json"),
        stems=["drive1_0001"],
        progress=False,
    )
    assert out["frames"] == ["drive1_0001", "drive1_0004"]
    tasks = json.loads((d / "t.json").read_text())
    assert [t["data"]["frame"] for t in tasks] == ["drive1_0001", "drive1_0004"]


def test_seed_masks_without_prompts_fails_unless_allowed(scene_folder: Path, capsys) -> None:
    """A pipeline whose humans have not prompted yet runs (--allow-empty); a person is told."""
    prompts = scene_folder / "prompts"
    prompts.mkdir()
    base = [
        "seed-masks",
        "--images",
        str(scene_folder / "images"),
        "--prompts",
        str(prompts),
        "--classes",
        str(scene_folder / "classes.json"),
        "--out",
        str(scene_folder / "sm"),
    ]
    assert main(base) == 2
    assert "no prompt files" in capsys.readouterr().err
    assert main([*base, "--allow-empty", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == []
    assert (scene_folder / "sm" / "records").is_dir()


def test_targets_pick_the_candidate_most_like_the_frames_to_label(
    scene_folder: Path, tmp_path: Path
) -> None:
    """With --targets holding (a copy of) one frame of the pool, k-center's first seed is that
    frame, and seeds.yaml says which frames the seeds serve."""
    import tasks.select_seeds as stage

    targets = tmp_path / "targets"
    targets.mkdir()
    frames = sorted((scene_folder / "images").glob("*.png"))
    for copy in range(3):
        (targets / f"new_{copy}.png").write_bytes(frames[4].read_bytes())
    params = stage.SelectSeedsParams(budget=1, short_side=0, dedupe_threshold=1.01)
    out = tmp_path / "seeds.yaml"
    doc = stage.select_seeds(
        str(scene_folder / "images"), str(out), params, progress=False, targets=str(targets)
    )
    assert [s["stem"] for s in doc["seeds"]] == [frames[4].stem]
    assert doc["targets"] == {"source": str(targets), "frames": 3}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LamflowError, match="no target frames"):
        stage.select_seeds(
            str(scene_folder / "images"), str(out), params, progress=False, targets=str(empty)
        )


def test_start_from_patches_caches_them_and_reports_coverage(
    scene_folder: Path, tmp_path: Path
) -> None:
    """`start: patches`: the first seed is the frame whose patches cover the targets' (here:
    copies of one pool frame, so that frame), its coverage is in seeds.yaml, and the patch
    embeddings are cached next to the frame embeddings (a second run reads them)."""
    import tasks.select_seeds as stage

    targets = tmp_path / "targets"
    targets.mkdir()
    frames = sorted((scene_folder / "images").glob("*.png"))
    for copy in range(2):
        (targets / f"new_{copy}.png").write_bytes(frames[2].read_bytes())
    params = stage.SelectSeedsParams(
        budget=2, short_side=0, dedupe_threshold=1.01, start="patches", patch_grid=[2, 2]
    )
    out = tmp_path / "seeds.yaml"
    doc = stage.select_seeds(
        str(scene_folder / "images"), str(out), params, progress=False, targets=str(targets)
    )
    assert doc["seeds"][0]["stem"] == frames[2].stem
    assert doc["seeds"][0]["patch_coverage"] == pytest.approx(1.0, abs=1e-4)
    assert "patch_coverage" not in doc["seeds"][1]
    cached = sorted(p.name for p in (tmp_path / "embeddings").glob("*-patches2x2t3.npy"))
    assert len(cached) == len(frames)  # the targets are byte copies of a pool frame
    again = stage.select_seeds(
        str(scene_folder / "images"), str(out), params, progress=False, targets=str(targets)
    )
    assert again["seeds"] == doc["seeds"]


def test_patch_grid_must_be_rows_and_cols() -> None:
    from lamflow.params import SelectSeedsParams

    with pytest.raises(ValueError, match="patch_grid must be"):
        SelectSeedsParams(patch_grid=[6])
