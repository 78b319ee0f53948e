"""Benchmark seed masks from simulated prompts on CamVid.

A simulated human, for every class region (4-connected ground-truth component of at least
`--min-area` pixels, at most `--max-regions` largest per class and frame), gives N clicks
sampled uniformly inside the region (eroded by 2 px where possible) and, in mode "box+points",
also the region's bounding box. The `region_grow` segmenter (offline fallback) turns them into
seed masks.

Reported per N:
* mask mIoU on CamVid val (every `--val-step`-th frame) against the ground truth; pixels left
  void count as misses; plus the fraction of pixels labelled and the accuracy on them;
* downstream: the annotator trained on the seed masks of `--seeds` (train drives 0006R0 and
  0001TP) vs trained on their full labels, scored on the same val frames.

    .venv/bin/python bench/prompts.py --clicks 1 3 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lam.build import LamConfig, build_backbone, build_lam  # noqa: E402
from lam.classes import ClassList  # noqa: E402
from lam.imageio import decode_image, decode_label  # noqa: E402
from lam.metrics import ConfusionAccumulator  # noqa: E402
from lam.predictor import Annotator  # noqa: E402
from lam.prompts.region_grow import RegionGrowSegmenter  # noqa: E402
from lam.prompts.schema import parse_prompts  # noqa: E402
from lam.train import TrainSettings, train_head  # noqa: E402

SEEDS = ("0006R0_f01830", "0006R0_f02640", "0001TP_007260", "0006R0_f03390", "0001TP_008190")


def load(root: Path, split: str, stems: list[str], scale: float):
    out = []
    for stem in stems:
        img = decode_image((root / split / "images" / f"{stem}.jpg").read_bytes(), stem)
        lab = decode_label((root / split / "labels" / f"{stem}.png").read_bytes(), stem)
        if scale != 1.0:
            size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
            img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
            lab = np.asarray(Image.fromarray(lab).resize(size, Image.NEAREST))
        out.append((stem, img, lab))
    return out


def simulate_prompts(
    label: np.ndarray,
    classes: ClassList,
    clicks: int,
    with_box: bool,
    rng: np.random.Generator,
    min_area: int,
    max_regions: int,
) -> dict:
    """Prompt file JSON for one frame from its ground truth (points XY, boxes XYXY)."""
    regions = []
    for cid in range(classes.num_classes):
        n, comp, stats, _ = cv2.connectedComponentsWithStats(
            (label == cid).astype(np.uint8), connectivity=4
        )
        order = sorted(range(1, n), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
        for k in [k for k in order if stats[k, cv2.CC_STAT_AREA] >= min_area][:max_regions]:
            region = comp == k
            inner = cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ys, xs = np.nonzero(inner if inner.any() else region)
            pick = rng.choice(len(ys), size=min(clicks, len(ys)), replace=False)
            entry: dict = {
                "class": classes.names[cid],
                "positive": [[int(xs[i]), int(ys[i])] for i in pick],
            }
            if with_box:
                x, y, w, h = (int(v) for v in stats[k, :4])
                entry["box"] = [x, y, x + w, y + h]
            regions.append(entry)
    return {"version": 1, "regions": regions}


def seed_masks_for(frames, classes, segmenter, clicks, with_box, args, seed):
    rng = np.random.default_rng(seed)
    out = []
    for stem, img, lab in frames:
        doc = simulate_prompts(lab, classes, clicks, with_box, rng, args.min_area, args.max_regions)
        prompts = parse_prompts(doc, classes, stem, lab.shape)
        out.append(segmenter.segment_frame(img, prompts, classes.ignore_index))
    return out


def mask_scores(preds, frames, classes: ClassList) -> dict:
    """mIoU with void predictions counted as misses; labelled fraction; accuracy on labelled."""
    c, void = classes.num_classes, classes.ignore_index
    inter, union = np.zeros(c), np.zeros(c)
    labelled = correct = total = 0
    for pred, (_, _, gt) in zip(preds, frames):
        keep = gt != void
        p, g = pred[keep], gt[keep]
        for k in range(c):
            inter[k] += np.sum((p == k) & (g == k))
            union[k] += np.sum((p == k) | (g == k))
        labelled += np.sum(p != void)
        correct += np.sum((p == g) & (p != void))
        total += p.size
    iou = inter[union > 0] / union[union > 0]
    return {
        "mask_miou": round(100 * float(iou.mean()), 2),
        "labelled_fraction": round(float(labelled / total), 4),
        "accuracy_on_labelled": round(100 * float(correct / max(1, labelled)), 2),
    }


def train_and_score(classes_json, backbone, images, labels, val, settings) -> float:
    class_list = ClassList.from_json(classes_json)
    model = build_lam(LamConfig(classes=classes_json), backbone=backbone)
    train_head(model, images, labels, class_list.ignore_index, settings)
    acc = ConfusionAccumulator(class_list.num_classes, class_list.ignore_index)
    for pred, (_, _, lab) in zip(Annotator(model, device="cpu").predict([v[1] for v in val]), val):
        acc.update(pred.label, lab)
    return round(100.0 * acc.scores().miou, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--camvid", default=os.environ.get("LAMFLOW_CAMVID", "../shared/data/camvid"))
    ap.add_argument("--clicks", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--modes", nargs="+", default=["points", "box+points"])
    ap.add_argument("--downstream-mode", default="box+points")
    ap.add_argument("--val-step", type=int, default=5)
    ap.add_argument("--scale", type=float, default=0.5, help="resize frames (speed)")
    ap.add_argument("--min-area", type=int, default=50, help="pixels, at --scale")
    ap.add_argument("--max-regions", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/bench/prompts.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    root = Path(args.camvid)
    classes_json = json.loads((root / "classes.json").read_text())
    classes = ClassList.from_json(classes_json)
    val_stems = sorted(p.stem for p in (root / "val" / "images").glob("*.jpg"))[:: args.val_step]
    val = load(root, "val", val_stems, args.scale)
    seeds = load(root, "train", list(SEEDS), args.scale)
    backbone = build_backbone("efficientnet_lite0").eval()
    segmenter = RegionGrowSegmenter(backbone=backbone, threshold=args.threshold)
    settings = TrainSettings(iterations=args.iterations, scales=(1.0,))
    results: dict = {
        "segmenter": "region_grow",
        "val": f"CamVid val every {args.val_step}th frame ({len(val)} frames)",
        "frame_scale": args.scale,
        "seeds": list(SEEDS),
        "simulation": {"min_area": args.min_area, "max_regions": args.max_regions},
        "train_iterations": args.iterations,
        "masks": {},
        "downstream": {},
    }
    for mode in args.modes:
        for n in tqdm(args.clicks, desc=f"masks {mode}"):
            preds = seed_masks_for(val, classes, segmenter, n, mode == "box+points", args, n)
            results["masks"][f"{mode} N={n}"] = mask_scores(preds, val, classes)
            print(mode, n, results["masks"][f"{mode} N={n}"], flush=True)
    imgs = [s[1] for s in seeds]
    full = train_and_score(classes_json, backbone, imgs, [s[2] for s in seeds], val, settings)
    results["downstream"]["full labels"] = full
    print("full labels", full, flush=True)
    for n in args.clicks:
        with_box = args.downstream_mode == "box+points"
        masks = seed_masks_for(seeds, classes, segmenter, n, with_box, args, 100 + n)
        key = f"{args.downstream_mode} N={n}"
        results["downstream"][key] = train_and_score(
            classes_json, backbone, imgs, masks, val, settings
        )
        print(key, results["downstream"][key], flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
