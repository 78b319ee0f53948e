"""Name-based taxonomy transfer (lam.class_transfer) against hand-made maps onto CamVid.

Cityscapes' 19 classes are compared with the hand map the ESPNetv2 numbers in
shared/weights/README.md were measured with; PASCAL VOC's 21 with the obvious one (person ->
pedestrian, car and bus -> car, bicycle and motorbike -> bicyclist, the rest unmapped). Each
is proposed four ways (bare names or the written table, each with and without WordNet) at a
few thresholds; a row counts as right when its target equals the hand map's.

    .venv/bin/python bench/class_transfer.py [--out outputs/bench/class_transfer.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lam.class_transfer import (  # noqa: E402
    CITYSCAPES_CLASSES,
    PASCAL_VOC_CLASSES,
    propose_source_mapping,
)
from lam.vocabulary.taxonomy import UNMAPPED  # noqa: E402
from lam.vocabulary.text_embedding import default_embedder  # noqa: E402
from lam.vocabulary.wordnet import WordNetNouns, find_wordnet_dir  # noqa: E402

CAMVID = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
          "pedestrian", "bicyclist"]  # fmt: skip
CITYSCAPES_HAND = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "building",
    "fence": "fence", "pole": "pole", "traffic light": "sign", "traffic sign": "sign",
    "vegetation": "tree", "terrain": "tree", "sky": "sky", "person": "pedestrian",
    "rider": "bicyclist", "car": "car", "truck": "car", "bus": "car", "train": "car",
    "motorcycle": "bicyclist", "bicycle": "bicyclist",
}  # fmt: skip
VOC_HAND = {c: UNMAPPED for c in PASCAL_VOC_CLASSES} | {
    "person": "pedestrian", "car": "car", "bus": "car", "bicycle": "bicyclist",
    "motorbike": "bicyclist",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.55, 0.6])
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    embed = default_embedder().embed
    folder = find_wordnet_dir()
    wordnets = [None, WordNetNouns(folder)] if folder else [None]
    results = []
    for threshold in args.thresholds:
        for table in (False, True):
            for wordnet in wordnets:
                for name, classes, hand, taxonomy in (
                    ("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_HAND, "cityscapes"),
                    ("pascal_voc", PASCAL_VOC_CLASSES, VOC_HAND, "pascal_voc"),
                ):
                    rows = propose_source_mapping(
                        classes,
                        CAMVID,
                        embed,
                        taxonomy=taxonomy if table else None,
                        wordnet=wordnet,
                        threshold=threshold,
                    )
                    wrong = {
                        r.synset: f"{r.target} ({r.similarity:.2f})"
                        for r in rows
                        if r.target != hand[r.synset]
                    }
                    result = {
                        "source": name,
                        "threshold": threshold,
                        "table": table,
                        "wordnet": wordnet is not None,
                        "right": len(rows) - len(wrong),
                        "of": len(rows),
                        "wrong": wrong,
                    }
                    results.append(result)
                    print(
                        f"{name:10s} thr {threshold:.2f} table={table!s:5s} "
                        f"wordnet={wordnet is not None!s:5s} {result['right']:2d}/{len(rows)} "
                        f"wrong: {wrong}"
                    )
    if folder is None:
        print("WordNet not installed (apt install wordnet-base): no WordNet variants")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
