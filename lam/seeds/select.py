"""Choose a budget of seed frames from frame embeddings, and say why each was chosen.

Methods (all deterministic for a given `seed`):

* **Near-duplicate removal.** Frames are visited in order (sorted stems = capture order within
  a drive); a frame whose cosine similarity to an already kept frame is >= `dedupe_threshold`
  is dropped as a duplicate of it. Consecutive frames of a drive are nearly identical, and
  labelling two of them wastes the budget.
* **typiclust** (Hacohen et al., "Active learning on a budget", ICML 2022): k-means
  with B clusters on the kept embeddings; in each cluster the most *typical* frame — highest
  inverse mean distance to its k nearest neighbours inside the cluster — is chosen. Clusters
  are ranked by size, largest first, so seed 1 represents the most common kind of scene. At
  tiny budgets typical frames beat outliers: a head trained on one frame should learn the
  common case.
* **kcenter** (default; Sener & Savarese, "Core-set", ICLR 2018): start from the most typical
  frame of the whole pool, then repeatedly add the frame farthest from every chosen one;
  minimises the largest distance from any frame to its nearest seed, so the seeds span the
  drop's different scenes (lighting, road types).
* **Targets.** Seeds serve the frames the annotator will label. By default those are the
  candidates themselves (seeds picked from the drop). When seeds come from elsewhere (an
  archive, an earlier drive) `targets` gives the embeddings of the frames to be labelled, and
  typicality is measured against them: a candidate is typical when many target frames lie
  near it. k-center starts at the candidate most typical of the targets (then adds diversity
  over the candidates); typiclust clusters the targets. On
  CamVid (seeds from drives 0006R0/0001TP, labelling drive 0016E5) the pool's most typical
  frame is a below-average single seed; the one most typical of the target drive is above
  average (bench/seeds.py, docs/seeds.md).
* **Patch coverage** (opt-in: pass patch embeddings; the stage does with `start: patches`):
  k-center's first seed is the candidate whose patches best cover the targets' patches — the
  mean, over every target patch, of its cosine similarity to the candidate's most similar
  patch. One seed can only teach what it shows, so it should show most of what the frames to
  label show, and a frame's mean embedding cannot tell a scene that contains the common content
  from one that merely averages to it. On CamVid it ranks single seeds better than frame-level
  density (mean single-seed mIoU of the top 3 frames 31.3 vs 27.7; B = 1: 32.05 vs 29.41), but
  the k-center sets grown from its start scored lower at B = 3 and 5 (33.97 / 37.67 vs
  37.20 / 39.83), so it is not the default (bench/seeds.py, docs/seeds.md).
* **Coverage pass.** Given which classes each frame shows (from a tagger or a previous
  annotator run), frames are added greedily — most still-missing classes first, typicality
  breaking ties — until every required class seen anywhere in the pool appears in some seed.
  These frames are added on top of the budget (reason "coverage").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lam.errors import LamflowError

METHODS = ("typiclust", "kcenter")


@dataclass
class SeedChoice:
    """One chosen frame. `index` indexes the embeddings given to `select_seeds`."""

    index: int
    rank: int  # 1 = annotate first
    reason: str  # "typical" (typiclust) | "kcenter" | "coverage"
    cluster: int | None = None  # typiclust cluster id
    cluster_size: int = 0  # frames (after de-duplication) in that cluster
    typicality: float = 0.0  # 1 / mean distance to k nearest neighbours (higher = more typical)
    distance: float = 0.0  # kcenter: distance to the nearest earlier seed when chosen
    coverage: float | None = None  # kcenter's first seed: patch coverage of the targets
    classes: list[str] = field(default_factory=list)  # classes this frame shows
    adds: list[str] = field(default_factory=list)  # classes no higher-ranked seed shows

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    seeds: list[SeedChoice]
    kept: list[int]  # indices left after de-duplication, in input order
    duplicate_of: dict[int, int]  # dropped index -> the kept index it duplicates
    uncovered: list[str]  # required classes seen in the pool that no seed shows (empty = ok)


def _check_embeddings(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise LamflowError(f"embeddings must be a non-empty (N, D) array, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise LamflowError("embeddings contain NaN or inf")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norms, 1e-12)


def drop_near_duplicates(emb: np.ndarray, threshold: float) -> tuple[list[int], dict[int, int]]:
    """(N, D) embeddings -> (kept indices, {dropped: kept it duplicates}).

    A frame is dropped when its cosine similarity to any earlier kept frame is >= threshold;
    threshold > 1 keeps everything.
    """
    unit = _check_embeddings(emb)
    kept: list[int] = [0]
    dup: dict[int, int] = {}
    for i in range(1, len(unit)):
        sims = unit[kept] @ unit[i]
        j = int(np.argmax(sims))
        if sims[j] >= threshold:
            dup[i] = kept[j]
        else:
            kept.append(i)
    return kept, dup


def _pairwise_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def typicality(emb: np.ndarray, k: int = 20) -> np.ndarray:
    """(N, D) -> (N,) 1 / mean Euclidean distance to the k nearest other points (TypiClust)."""
    n = len(emb)
    if n == 1:
        return np.ones(1)
    d = _pairwise_dist(emb, emb)
    np.fill_diagonal(d, np.inf)
    k = max(1, min(k, n - 1))
    nearest = np.sort(d, axis=1)[:, :k]
    return 1.0 / (nearest.mean(axis=1) + 1e-8)


def kmeans(
    emb: np.ndarray, k: int, seed: int = 0, restarts: int = 5, iterations: int = 100
) -> np.ndarray:
    """(N, D) -> (N,) cluster ids in [0, k): k-means++ init, best of `restarts` by inertia."""
    n = len(emb)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    best, best_inertia = np.zeros(n, dtype=np.int64), np.inf
    for _ in range(restarts):
        centres = [emb[rng.integers(n)]]
        for _ in range(1, k):
            d2 = _pairwise_dist(emb, np.stack(centres)).min(axis=1) ** 2
            probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            centres.append(emb[rng.choice(n, p=probs)])
        c = np.stack(centres)
        assign = np.zeros(n, dtype=np.int64)
        for it in range(iterations):
            new = np.argmin(_pairwise_dist(emb, c), axis=1)
            if it > 0 and np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = emb[assign == j]
                if len(members):
                    c[j] = members.mean(axis=0)
        inertia = float((_pairwise_dist(emb, c)[np.arange(n), assign] ** 2).sum())
        if inertia < best_inertia - 1e-12:
            best, best_inertia = assign.copy(), inertia
    return best


def target_density(cand: np.ndarray, targets: np.ndarray | None, k: int) -> np.ndarray:
    """(N, D) candidates -> (N,) 1 / mean distance to their k nearest targets (M, D).

    targets None: the candidates are the targets, each candidate's own row excluded
    (= `typicality`). Higher = more target frames look like this candidate.
    """
    if targets is None:
        return typicality(cand, k)
    d = _pairwise_dist(cand, targets)
    k = max(1, min(k, targets.shape[0]))
    return 1.0 / (np.sort(d, axis=1)[:, :k].mean(axis=1) + 1e-8)


def patch_coverage(
    patches: np.ndarray,
    target_patches: np.ndarray,
    max_target_patches: int = 4096,
    seed: int = 0,
) -> np.ndarray:
    """How well each candidate's patches cover the target patches.

    Args:
        patches: (N, G, P) L2-normalised patch embeddings of N candidate frames.
        target_patches: (M, G', P) of the frames to serve (any grid size G').
        max_target_patches: at most this many target patches are scored (a seeded random
            subset), so the cost stays N * G * max_target_patches * P however large the drop.
        seed: seed of that subset.
    Returns:
        (N,) mean over target patches of the cosine similarity to the candidate's most
        similar patch; higher = the frame shows more of what the targets show.
    """
    if patches.ndim != 3 or target_patches.ndim != 3:
        raise LamflowError(
            f"patch embeddings must be (frames, patches, dims), got {patches.shape} and "
            f"{target_patches.shape}"
        )
    if patches.shape[2] != target_patches.shape[2]:
        raise LamflowError(
            f"target patches have {target_patches.shape[2]} dimensions, candidates "
            f"{patches.shape[2]}"
        )
    flat = target_patches.reshape(-1, target_patches.shape[2]).astype(np.float32)
    if len(flat) > max_target_patches:
        rows = np.random.default_rng(seed).choice(len(flat), max_target_patches, replace=False)
        flat = flat[np.sort(rows)]
    n, g, d = patches.shape
    cand = patches.astype(np.float32)
    chunk = max(1, (1 << 24) // max(1, len(flat) * g))
    out = np.empty(n, dtype=np.float64)
    for i in range(0, n, chunk):
        sims = flat @ cand[i : i + chunk].reshape(-1, d).T  # (targets, chunk * G)
        out[i : i + chunk] = sims.reshape(len(flat), -1, g).max(axis=2).mean(axis=0)
    return out


def _typiclust(
    emb: np.ndarray, budget: int, k: int, seed: int, targets: np.ndarray | None = None
) -> list[SeedChoice]:
    """Cluster the targets (default: the candidates) into `budget` groups, largest first; per
    group the candidate most typical of that group's targets, each candidate at most once."""
    pts = emb if targets is None else targets
    labels = kmeans(pts, budget, seed=seed)
    clusters = sorted(set(labels.tolist()), key=lambda c: (-int((labels == c).sum()), c))
    out: list[SeedChoice] = []
    taken: set[int] = set()
    for cid in clusters[:budget]:
        members = np.flatnonzero(labels == cid)
        if targets is None:
            typ = np.full(len(emb), -np.inf)
            typ[members] = typicality(emb[members], k)
        else:
            typ = target_density(emb, targets[members], k)
        typ[list(taken)] = -np.inf
        best = int(np.argmax(typ))
        if not np.isfinite(typ[best]):
            break
        taken.add(best)
        out.append(
            SeedChoice(
                index=best,
                rank=0,
                reason="typical",
                cluster=int(cid),
                cluster_size=len(members),
                typicality=round(float(typ[best]), 4),
            )
        )
    return out


def _kcenter(
    emb: np.ndarray,
    budget: int,
    k: int,
    targets: np.ndarray | None = None,
    coverage: np.ndarray | None = None,
) -> list[SeedChoice]:
    """Greedy farthest-first: start at the candidate with the best patch `coverage` (N,) of
    the targets when given, else the one most typical of the targets (default: of the
    candidates), then repeatedly add the candidate farthest from every seed so far.

    The targets choose only the start. Chasing the target frame farthest from the seeds was
    measured too: over one homogeneous target drive those are its outlying frames, and it
    scored lower at B = 3 and 5 than the pool's own diversity (bench/seeds.py, docs/seeds.md).
    """
    typ = target_density(emb, targets, k)
    first = int(np.argmax(typ if coverage is None else coverage))
    out = [
        SeedChoice(index=first, rank=0, reason="kcenter", typicality=round(float(typ[first]), 4))
    ]
    if coverage is not None:
        out[0].coverage = round(float(coverage[first]), 4)
    nearest = _pairwise_dist(emb, emb[[first]])[:, 0]
    for _ in range(1, min(budget, len(emb))):
        nxt = int(np.argmax(nearest))
        out.append(
            SeedChoice(
                index=nxt,
                rank=0,
                reason="kcenter",
                typicality=round(float(typ[nxt]), 4),
                distance=round(float(nearest[nxt]), 4),
            )
        )
        nearest = np.minimum(nearest, _pairwise_dist(emb, emb[[nxt]])[:, 0])
    return out


def select_seeds(
    embeddings: np.ndarray,
    budget: int,
    method: str = "kcenter",
    dedupe_threshold: float = 0.9,
    presence: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    required: Sequence[str] | None = None,
    k_neighbors: int = 20,
    seed: int = 0,
    targets: np.ndarray | None = None,
    patches: np.ndarray | None = None,
    target_patches: np.ndarray | None = None,
) -> Selection:
    """Pick `budget` seed frames (plus coverage frames) from (N, D) frame embeddings.

    Args:
        embeddings: (N, D) float, one row per frame in capture order.
        budget: B >= 1 frames chosen by `method` (fewer if fewer distinct frames exist).
        method: "typiclust" or "kcenter" (see module docstring).
        dedupe_threshold: cosine similarity at or above which a frame is a duplicate.
        presence: optional (N, C) bool, frame i shows class c; enables the coverage pass.
        class_names: C names of presence's columns (required with `presence`).
        required: class names that must be covered; None = every column of `presence`.
        k_neighbors: neighbours used for typicality.
        seed: k-means seed.
        targets: optional (M, D) embeddings of the frames the seeds must serve (the frames to
            be labelled) when they are not the candidates themselves. None = the candidates.
            Targets are not de-duplicated: every frame to label counts, and a scene that
            fills most of a drive should weigh as much as it does in the labelling.
        patches: optional (N, G, P) patch embeddings of the candidates
            (`lam.seeds.embed.embed_frames_and_patches`); k-center then starts at the
            candidate with the best `patch_coverage` of the targets. typiclust ignores them.
        target_patches: (M, G', P) patches of `targets` (required with `targets` when
            `patches` is given); None with no targets = the de-duplicated candidates' patches.
    Returns:
        a Selection whose seeds are ranked (rank 1 first), each with its reason.
    """
    if method not in METHODS:
        raise LamflowError(f"unknown seed selection method {method!r}; known: {', '.join(METHODS)}")
    if int(budget) < 1:
        raise LamflowError(f"seed budget must be >= 1, got {budget}")
    unit = _check_embeddings(embeddings)
    n = len(unit)
    names: list[str] = []
    if presence is not None:
        presence = np.asarray(presence, dtype=bool)
        if class_names is None or presence.shape != (n, len(class_names)):
            raise LamflowError(
                f"presence must be (N={n}, C={len(class_names or [])}) with class_names, "
                f"got {presence.shape}"
            )
        names = list(class_names)
    kept, dup = drop_near_duplicates(unit, dedupe_threshold)
    sub = unit[kept]
    target_unit = None
    if targets is not None:
        target_unit = _check_embeddings(targets)
        if target_unit.shape[1] != unit.shape[1]:
            raise LamflowError(
                f"targets have {target_unit.shape[1]} dimensions, embeddings {unit.shape[1]}"
            )
    coverage = None
    if patches is not None and method == "kcenter":
        patches = np.asarray(patches)
        if patches.ndim != 3 or len(patches) != n:
            raise LamflowError(
                f"patches must be (N={n}, patches, dims), one row per embedding, got "
                f"{patches.shape}"
            )
        if target_unit is not None and target_patches is None:
            raise LamflowError("patches with targets need target_patches too")
        tp = patches[kept] if target_patches is None else np.asarray(target_patches)
        coverage = patch_coverage(patches[kept], tp, seed=seed)
    if method == "typiclust":
        seeds = _typiclust(sub, int(budget), k_neighbors, seed, target_unit)
    else:
        seeds = _kcenter(sub, int(budget), k_neighbors, target_unit, coverage)
    for s in seeds:
        s.index = kept[s.index]
    uncovered: list[str] = []
    if presence is not None:
        req = list(names) if required is None else [c for c in required if c in names]
        missing_names = sorted(set(required or []) - set(names))
        if missing_names:
            raise LamflowError(f"required classes {missing_names} are not among {names}")
        cols = np.array([names.index(c) for c in req], dtype=np.int64)
        typ_all = typicality(unit, k_neighbors)
        covered = presence[[s.index for s in seeds]][:, cols].any(axis=0)
        seen = presence[:, cols].any(axis=0)
        chosen = {s.index for s in seeds}
        while True:
            need = seen & ~covered
            if not need.any():
                break
            gain = presence[:, cols][:, need].sum(axis=1).astype(np.float64)
            gain[list(chosen)] = -1
            # Most missing classes first; among equals the most typical frame.
            score = gain * 1e6 + typ_all / (typ_all.max() + 1e-12)
            best = int(np.argmax(score))
            if gain[best] <= 0:
                break
            seeds.append(
                SeedChoice(
                    index=best, rank=0, reason="coverage", typicality=round(float(typ_all[best]), 4)
                )
            )
            chosen.add(best)
            covered |= presence[best, cols]
        uncovered = [req[i] for i in np.flatnonzero(seen & ~covered)]
        shown: set[str] = set()
        for s in seeds:
            s.classes = [names[c] for c in np.flatnonzero(presence[s.index])]
            s.adds = [c for c in s.classes if c not in shown and c in req]
            shown.update(s.classes)
    for r, s in enumerate(seeds, start=1):
        s.rank = r
    return Selection(seeds=seeds, kept=kept, duplicate_of=dup, uncovered=uncovered)
