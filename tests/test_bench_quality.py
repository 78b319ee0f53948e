"""bench/quality.py's protocol: what a fold trains on and what it is scored on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folds_and_val_keep_seeds_away_from_what_they_score(quality, camvid: Path) -> None:
    runs = quality.cases(camvid, ["1", "6", "21", "all"], val=True)
    assert len(runs) == 3 * 4 * 2 + 4 * 2
    val_stems = {p.stem for p in (camvid / "val" / "images").glob("*.jpg")}
    for run in runs:
        target = run["target"]
        seeds = set(run["seeds"])
        same = [s for s in run["seeds"] if s.startswith(target)]
        assert len(same) == (4 if run["same"] else 0)
        assert not seeds & set(run["scored"]) and not seeds & val_stems
        for s in same:  # >= 300 frame numbers (10 s) from every scored frame
            gaps = [abs(quality.frame_number(s) - quality.frame_number(t)) for t in run["scored"]]
            assert min(gaps) >= 300
        others = [s for s in run["seeds"] if not s.startswith(target)]
        assert len(others) == (int(run["count"]) if run["count"] != "all" else len(others))
        if run["split"] == "val":
            assert set(run["scored"]) == set(run["drop"]) == val_stems
        else:
            assert all(s.startswith(target) for s in run["drop"] + run["scored"])
    # with and without the same-drive frames, a fold scores the same frames
    for a, b in zip(runs[::2], runs[1::2]):
        assert a["scored"] == b["scored"] and not a["same"] and b["same"]
