"""Stage review_select on a labeled synthetic drop: budget, reasons, QC flags, seeds excluded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamflow.params import AnnotateParams, ReviewParams, SelectSeedsParams
from tasks.annotate import annotate
from tasks.review_select import review_select
from tests.pipeline.helpers import write_drop

EMBED = SelectSeedsParams(short_side=64)


def _labeled(tmp_path: Path, model: dict[str, Any]) -> tuple[str, str]:
    write_drop(str(tmp_path), "d1", 6)
    images, out = str(tmp_path / "drops/d1/images"), str(tmp_path / "out")
    annotate(model["model"], images, out, AnnotateParams(), progress=False)
    return images, out


def test_choices_are_ranked_explained_and_flagged_frames_first(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    images, out = _labeled(tmp_path, tiny_model)
    (Path(out) / "review.json").write_text(
        json.dumps([{"stem": "d1_0004", "reasons": ["mean_confidence=0.2 outside [0.5, 1]"]}])
    )
    params = ReviewParams(budget_per_drop=3, dedupe_threshold=1.01)
    doc = review_select(out, images, tiny_model["model"], params=params, embed=EMBED)
    rows = doc["frames"]
    assert [r["rank"] for r in rows] == [1, 2, 3] and doc["candidates"] == 6
    assert rows[0]["stem"] == "d1_0004" and rows[0]["flagged"]
    assert "qc flagged: mean_confidence=0.2" in rows[0]["reasons"][0]
    assert all(any(x.startswith("uncertainty") for x in r["reasons"]) for r in rows)
    assert len({r["stem"] for r in rows}) == 3
    assert json.loads((Path(out) / "review_selection.json").read_text()) == doc
    assert list((Path(out) / "embeddings").glob("*.npy")), "embeddings are cached by sha256"


def test_seed_frames_are_never_chosen_and_random_differs_per_drop(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    from tasks.seed_set import add_seed
    from tests.conftest import make_scene
    from tests.pipeline.helpers import TINY_CLASSES

    images, out = _labeled(tmp_path, tiny_model)
    from lam.classes import ClassList

    seeds = tmp_path / "seeds"
    for stem in ("d1_0000", "d1_0001"):
        data = (Path(images) / f"{stem}.png").read_bytes()
        _, lab = make_scene(0)
        add_seed(str(seeds), stem, data, "png", lab, ClassList.from_json(TINY_CLASSES), {})
    params = ReviewParams(budget_per_drop=6, dedupe_threshold=1.01)
    doc = review_select(
        out, images, tiny_model["model"], params=params, embed=EMBED, seeds=str(seeds)
    )
    assert doc["candidates"] == 4
    assert {"d1_0000", "d1_0001"}.isdisjoint(r["stem"] for r in doc["frames"])

    rnd = ReviewParams(budget_per_drop=2, strategy="random")
    a = review_select(out, images, tiny_model["model"], str(tmp_path / "a.json"), rnd, EMBED)
    assert a["strategy"] == "random" and len(a["frames"]) == 2
    assert all(r["reasons"] == ["random (review.strategy: random)"] for r in a["frames"])
