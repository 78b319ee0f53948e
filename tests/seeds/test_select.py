"""Seed selection on synthetic embeddings: coverage, de-duplication, coverage pass, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.seeds.select import (
    drop_near_duplicates,
    kmeans,
    patch_coverage,
    select_seeds,
    typicality,
)


def _blobs(sizes=(30, 20, 10), dim=8, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs: (N, dim) embeddings and (N,) blob ids."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)] * 10
    emb = np.concatenate([c + rng.normal(0, 0.3, (n, dim)) for c, n in zip(centres, sizes)])
    ids = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    return emb, ids


@pytest.mark.parametrize("method", ["typiclust", "kcenter"])
def test_budget_covers_every_blob(method: str) -> None:
    emb, ids = _blobs()
    sel = select_seeds(emb, 3, method=method, dedupe_threshold=1.01)
    assert sorted(ids[[s.index for s in sel.seeds]].tolist()) == [0, 1, 2]
    assert [s.rank for s in sel.seeds] == [1, 2, 3]


def test_typiclust_ranks_largest_cluster_first_and_picks_typical_frames() -> None:
    emb, ids = _blobs()
    sel = select_seeds(emb, 3, method="typiclust", dedupe_threshold=1.01)
    assert [s.cluster_size for s in sel.seeds] == [30, 20, 10]
    first = sel.seeds[0]
    members = np.flatnonzero(ids == 0)
    assert first.index in members and first.reason == "typical"
    # The chosen frame is the most typical of its blob.
    typ = typicality(emb[members] / np.linalg.norm(emb[members], axis=1, keepdims=True), 20)
    assert members[int(np.argmax(typ))] == first.index


def test_kcenter_minimises_the_covering_radius() -> None:
    emb, _ = _blobs(sizes=(40, 3), dim=4)
    sel = select_seeds(emb, 2, method="kcenter", dedupe_threshold=1.01)
    # The second seed is the farthest region: the small, distant blob.
    assert sel.seeds[1].index >= 40 and sel.seeds[1].distance > 1.0


def test_near_duplicates_are_dropped_and_never_chosen() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(5, 16))
    # Each distinct frame followed by 3 almost identical copies (consecutive video frames).
    emb = np.repeat(base, 4, axis=0) + rng.normal(0, 1e-3, (20, 16))
    kept, dup = drop_near_duplicates(emb, 0.99)
    assert kept == [0, 4, 8, 12, 16]
    assert dup[1] == 0 and dup[7] == 4 and len(dup) == 15
    sel = select_seeds(emb, 5, method="kcenter", dedupe_threshold=0.99)
    assert sorted(s.index for s in sel.seeds) == kept


def test_coverage_pass_adds_a_frame_with_the_missing_class() -> None:
    emb, _ = _blobs()
    presence = np.zeros((60, 3), dtype=bool)
    presence[:, 0] = True  # road everywhere
    presence[:30, 1] = True  # sky in the big blob
    presence[57, 2] = True  # a rare bicycle in one frame only
    sel = select_seeds(
        emb,
        2,
        method="typiclust",  # picks typical frames, so the rare frame 57 is not among them
        presence=presence,
        class_names=["road", "sky", "bicycle"],
        dedupe_threshold=1.01,
    )
    added = [s for s in sel.seeds if s.reason == "coverage"]
    assert [(s.index, s.adds) for s in added if "bicycle" in s.adds] == [(57, ["bicycle"])]
    assert sel.seeds[0].adds[0] == "road" and sel.seeds[2].rank == 3
    shown = {c for s in sel.seeds for c in s.classes}
    assert shown == {"road", "sky", "bicycle"} and sel.uncovered == []


def test_coverage_only_for_required_classes() -> None:
    emb, _ = _blobs()
    presence = np.zeros((60, 2), dtype=bool)
    presence[57, 1] = True
    sel = select_seeds(
        emb, 1, presence=presence, class_names=["road", "bicycle"], required=["road"]
    )
    assert len(sel.seeds) == 1


def test_selection_is_deterministic() -> None:
    emb, _ = _blobs(seed=3)
    a = select_seeds(emb, 4, seed=7)
    b = select_seeds(emb.copy(), 4, seed=7)
    assert [s.as_dict() for s in a.seeds] == [s.as_dict() for s in b.seeds]
    assert kmeans(emb, 3, seed=1).tolist() == kmeans(emb, 3, seed=1).tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0}, "budget must be >= 1, got 0"),
        ({"method": "random"}, "unknown seed selection method 'random'"),
        ({"presence": np.zeros((3, 2), bool), "class_names": ["a", "b"]}, "presence must be"),
        (
            {"presence": np.zeros((60, 1), bool), "class_names": ["a"], "required": ["zebra"]},
            "required classes ['zebra']",
        ),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, message: str) -> None:
    emb, _ = _blobs()
    args = {"budget": 2, **kwargs}
    with pytest.raises(LamflowError, match=None) as err:
        select_seeds(emb, **args)
    assert message in str(err.value)


def test_nan_embeddings_are_refused() -> None:
    emb = np.ones((3, 4))
    emb[1, 2] = np.nan
    with pytest.raises(LamflowError, match="NaN"):
        select_seeds(emb, 1)


@pytest.mark.parametrize("method", ["typiclust", "kcenter"])
def test_targets_steer_the_choice_to_the_frames_to_label(method: str) -> None:
    """Candidates: a big blob A and small blobs B and C. Without targets the first seed is
    typical of the candidates (blob A); when most frames to label look like blob B, the first
    seed is the blob-B candidate nearest them. Then typiclust covers the targets' other mode
    (C), and k-center adds the candidate farthest from the first (diversity of the pool)."""
    emb, ids = _blobs(sizes=(40, 6, 6), dim=6, seed=3)
    rng = np.random.default_rng(4)
    centre_b, centre_c = np.eye(6)[1] * 10, np.eye(6)[2] * 10
    targets = np.concatenate(
        [centre_b + rng.normal(0, 0.3, (30, 6)), centre_c + rng.normal(0, 0.3, (10, 6))]
    )
    plain = select_seeds(emb, 1, method=method, dedupe_threshold=1.01)
    assert ids[plain.seeds[0].index] == 0
    steered = select_seeds(emb, 2, method=method, dedupe_threshold=1.01, targets=targets)
    picked = [s.index for s in steered.seeds]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    t_unit = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    members = np.flatnonzero(ids == 1)
    mean_dist = np.linalg.norm(unit[members, None] - t_unit[None, :30], axis=2).mean(1)
    assert picked[0] == members[int(np.argmin(mean_dist))]
    if method == "typiclust":
        assert ids[picked[1]] == 2
    else:
        assert picked[1] == int(np.argmax(np.linalg.norm(unit - unit[picked[0]], axis=1)))


def test_targets_must_match_the_embedding_size() -> None:
    emb, _ = _blobs()
    with pytest.raises(LamflowError, match="targets have 4 dimensions, embeddings 8"):
        select_seeds(emb, 2, targets=np.ones((3, 4)))


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_patch_coverage_prefers_the_frame_showing_everything_the_targets_show() -> None:
    """Targets show content A in half their patches and B in the other half. Frame 0 shows only
    A, frame 1 only a blend of A and B (its mean embedding matches the targets' mean best),
    frame 2 shows A and B side by side: only frame 2 covers every target patch."""
    a, b = np.eye(4)[0], np.eye(4)[1]
    targets = _unit(np.array([[a, a, b, b]] * 3, dtype=np.float64))
    frames = _unit(np.array([[a, a, a, a], [a + b] * 4, [a, a, b, a]], dtype=np.float64))
    cov = patch_coverage(frames, targets)
    assert np.argmax(cov) == 2
    assert np.allclose(cov, [0.5, np.sqrt(0.5), 1.0])
    # Capping the target patches scores a seeded subset; frames 1 and 2 score the same on any.
    capped = patch_coverage(frames, targets, max_target_patches=5, seed=1)
    assert np.argmax(capped) == 2 and np.allclose(capped[1:], cov[1:])


def test_kcenter_starts_at_the_best_patch_coverage() -> None:
    emb, _ = _blobs(sizes=(40, 6, 6), dim=6, seed=3)
    rng = np.random.default_rng(0)
    patches = _unit(rng.normal(size=(len(emb), 4, 5)))
    target_patches = np.repeat(patches[[17]], 3, axis=0)  # three copies of candidate 17
    sel = select_seeds(
        emb,
        2,
        dedupe_threshold=1.01,
        patches=patches,
        target_patches=target_patches,
        targets=emb[[17, 17, 17]],
    )
    assert sel.seeds[0].index == 17 and sel.seeds[0].coverage == pytest.approx(1.0)
    # Without targets the candidates' own patches are the targets.
    own = select_seeds(emb, 1, dedupe_threshold=1.01, patches=patches)
    assert own.seeds[0].index == int(np.argmax(patch_coverage(patches, patches)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patches": np.ones((3, 4, 5))}, r"patches must be \(N=52"),
        ({"patches": np.ones((52, 4, 5)), "targets": np.ones((2, 6))}, "need target_patches"),
    ],
)
def test_bad_patches_are_named(kwargs, match) -> None:
    emb, _ = _blobs(sizes=(40, 6, 6), dim=6, seed=3)
    if "targets" in kwargs:
        kwargs["targets"] = np.ones((2, emb.shape[1]))
    with pytest.raises(LamflowError, match=match):
        select_seeds(emb, 2, **kwargs)


def test_patch_coverage_checks_its_shapes() -> None:
    with pytest.raises(LamflowError, match="target patches have 3 dimensions, candidates 5"):
        patch_coverage(np.ones((2, 4, 5)), np.ones((2, 4, 3)))
    with pytest.raises(LamflowError, match="must be \\(frames, patches, dims\\)"):
        patch_coverage(np.ones((2, 5)), np.ones((2, 4, 5)))
