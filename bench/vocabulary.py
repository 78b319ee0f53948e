"""Benchmark vocabulary discovery on CamVid with the LLM2Labels protocol.

The ranked vocabulary (synsets, best first) is compared with CamVid's 11 classes, each with
a hand-written list of synonyms (GROUND_TRUTH below; used only here, as ground truth):
- P@K: fraction of the top-K synsets that name a CamVid class (any member matches a synonym);
- R@K: fraction of the 11 classes named by at least one of the top-K synsets;
- AUC(PR@K): sum over K of P@K * (R@K - R@(K-1)), the area under the PR@K curve.
"strict" (the LLM2Labels protocol) matches synset names/synonyms against the class synonym
lists. "mapped" scores the stage's mapping table instead (MiniLM similarity + WordNet
hypernyms): a synset counts for class c only if the table maps it to c *and* c is right for
it, i.e. one of its names or WordNet hypernyms is in c's synonym list ('cinema' -> theater
-> building); a synset mapped to a class it does not belong to ('missile' -> car) is a miss.
Each view variant (full frame, 2x2 grid, both) is tagged once; every combiner x threshold
variant is computed from the same per-view probabilities.

    .venv/bin/python bench/vocabulary.py --frames 48 --out outputs/bench/vocabulary.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lam.vocabulary.filtering import (  # noqa: E402
    COMBINERS,
    THRESHOLDS,
    LabelEvidence,
    accumulate,
    rank_labels,
)
from lam.vocabulary.grouping import Synset, cluster_labels  # noqa: E402
from lam.vocabulary.hierarchy import add_wordnet_hypernyms  # noqa: E402
from lam.vocabulary.imagenet_tagger import ImageNetTagger  # noqa: E402
from lam.vocabulary.taxonomy import map_synsets  # noqa: E402
from lam.vocabulary.text_embedding import default_embedder  # noqa: E402
from lam.vocabulary.wordnet import WordNetNouns, find_wordnet_dir  # noqa: E402

GROUND_TRUTH: dict[str, list[str]] = {
    "sky": ["sky", "cloud", "clouds"],
    "building": [
        "building", "house", "facade", "edifice", "apartment building", "office building",
        "skyscraper", "storefront", "shop", "store",
    ],
    "pole": [
        "pole", "lamppost", "lamp post", "street lamp", "streetlight", "utility pole",
        "telephone pole", "post",
    ],
    "road": ["road", "street", "roadway", "highway", "asphalt", "lane"],
    "sidewalk": ["sidewalk", "pavement", "footpath", "walkway", "curb"],
    "tree": ["tree", "trees", "vegetation", "bush", "shrub", "hedge", "foliage"],
    "sign": ["sign", "street sign", "traffic sign", "traffic light", "signboard", "billboard"],
    "fence": [
        "fence", "railing", "guardrail", "barrier", "picket fence", "chainlink fence",
        "worm fence",
    ],
    "car": [
        "car", "automobile", "auto", "motorcar", "sports car", "cab", "taxi", "minivan", "jeep",
        "convertible", "limousine", "beach wagon", "station wagon", "racer", "van", "pickup",
        "police van", "moving van", "truck", "trailer truck", "bus", "minibus", "trolleybus",
        "school bus",
    ],
    "pedestrian": ["pedestrian", "person", "people", "man", "woman", "child", "walker"],
    "bicyclist": [
        "bicyclist", "cyclist", "bicycle", "bike", "mountain bike", "bicycle-built-for-two",
        "moped", "motor scooter", "motorcycle",
    ],
}  # fmt: skip
VIEW_ROWS = {"full": slice(0, 1), "grid": slice(1, 5), "both": slice(0, 5)}


_LOOKUP = {syn: cls for cls, syns in GROUND_TRUTH.items() for syn in syns}


def strict_hits(synsets: list[Synset]) -> list[set[str]]:
    """For each synset, the CamVid classes one of its members names."""
    return [{_LOOKUP[m] for m in s.members if m in _LOOKUP} for s in synsets]


def mapped_hits(synsets: list[Synset], targets: list[str]) -> list[set[str]]:
    """For each synset, its mapped class if its names or WordNet hypernyms support it."""
    out = []
    for s, target in zip(synsets, targets):
        truth = {_LOOKUP[n] for n in [*s.members, *s.hypernyms] if n in _LOOKUP}
        out.append({target} & truth)
    return out


def pr_at_k(hits: list[set[str]], ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """P@K and R@K at `ks`, the AUC over all K, and the number of classes ever found."""
    n_cls = len(GROUND_TRUTH)
    found: set[str] = set()
    correct, auc, prev_r, out = 0, 0.0, 0.0, {}
    for k, h in enumerate(hits, start=1):
        correct += bool(h)
        found |= h
        p, r = correct / k, len(found) / n_cls
        auc += p * (r - prev_r)
        prev_r = r
        if k in ks:
            out[f"P@{k}"], out[f"R@{k}"] = round(p, 3), round(r, 3)
    for k in ks:  # a list shorter than K: everything it has counts, precision over K
        if f"P@{k}" not in out:
            out[f"P@{k}"], out[f"R@{k}"] = round(correct / k, 3), round(len(found) / n_cls, 3)
    out["AUC"], out["found"], out["n"] = round(auc, 3), sorted(found), len(hits)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", default="../shared/data/camvid")
    parser.add_argument("--frames", type=int, default=48, help="evenly spaced over train+val")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--out", default="outputs/bench/vocabulary.json")
    args = parser.parse_args()
    root = Path(args.camvid)
    paths = sorted((root / "train" / "images").glob("*.jpg")) + sorted(
        (root / "val" / "images").glob("*.jpg")
    )
    if not paths:
        print(f"no CamVid frames under {root}", file=sys.stderr)
        return 2
    idx = np.linspace(0, len(paths) - 1, min(args.frames, len(paths))).round().astype(int)
    chosen = [paths[i] for i in sorted(set(idx.tolist()))]
    tagger = ImageNetTagger(views="both", top_k=args.top_k, min_prob=0.02)
    started = time.perf_counter()
    probs = [
        tagger.view_probabilities(np.asarray(Image.open(p).convert("RGB")))
        for p in tqdm(chosen, desc="tag", unit="frame")
    ]
    tag_seconds = time.perf_counter() - started
    embedder = default_embedder()
    wn_dir = find_wordnet_dir()
    wordnet = WordNetNouns(wn_dir) if wn_dir else None
    results = []
    for views, how, threshold in product(VIEW_ROWS, COMBINERS, THRESHOLDS):
        evidence: dict[str, LabelEvidence] = {}
        for frame_probs in probs:
            props = tagger.proposals_from_probabilities(frame_probs[VIEW_ROWS[views]])
            accumulate(evidence, props.labels, how, props.wnids)
        ranked = rank_labels(evidence.values(), len(probs), how=how, threshold=threshold)
        synsets = cluster_labels(ranked, embedder.embed([r.label for r in ranked]), 0.3)
        if wordnet is not None:
            add_wordnet_hypernyms(synsets, wordnet)
        mapping = map_synsets(synsets, list(GROUND_TRUTH), embedder.embed, 0.5)
        mapped = mapped_hits(synsets, [m.target for m in mapping])
        n_mapped = sum(m.target != "unmapped" for m in mapping)
        results.append(
            {
                "views": views,
                "combine": how,
                "threshold": threshold,
                "strict": pr_at_k(strict_hits(synsets)),
                "mapped": pr_at_k(mapped),
                "mapping_accuracy": round(sum(map(bool, mapped)) / max(1, n_mapped), 3),
                "top10": [s.name for s in synsets[:10]],
            }
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "frames": len(chosen),
        "tag_seconds": round(tag_seconds, 1),
        "wordnet": str(wn_dir) if wn_dir else None,
        "results": results,
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"{len(chosen)} frames tagged in {tag_seconds:.0f}s; WordNet: {wn_dir}")
    print(
        "| views | combine | threshold | n | strict P@10 | R@10 | AUC | mapped P@10 | R@10 | AUC |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, m = r["strict"], r["mapped"]
        print(
            f"| {r['views']} | {r['combine']} | {r['threshold']} | {s['n']} | {s['P@10']} | "
            f"{s['R@10']} | {s['AUC']} | {m['P@10']} | {m['R@10']} | {m['AUC']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
