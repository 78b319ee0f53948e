"""Benchmark seed selection: annotator mIoU when trained on selected vs random seed frames.

Pool: CamVid train frames of drives 0006R0 and 0001TP (163 frames). Evaluation: CamVid val
(drive 0016E5, never in the pool), every `--val-step`-th frame. For each budget B the annotator
is trained once on the B frames `select_seeds` picks and once on each of `--draws` random draws
of B frames from the same pool, all with the same reduced TrainSettings; the target is
selected >= random mean + 1 std at every B. With `--targets val` (the default) the selection is
also given the embeddings of every val frame, the frames the seeds will serve (pixels only,
never their labels), as `lamflow select-seeds --targets` would be when seeds are picked from
an archive for a new drive; `--targets none` selects on the pool alone.

With `--neighbours N`, each selected set is also scored N more times with every seed swapped
for a frame next to it in capture order (offsets +1, -1, +2, -2, ...; same drive). CamVid's
labelled frames are 1 s apart, so these are the frames de-duplication treats as the same
scene: their spread is how much of a set's score is the rule and how much is the exact frame.

    .venv/bin/python bench/seeds.py --budgets 1 3 5 --draws 10 --iterations 100 --val-step 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

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
from lam.seeds.embed import embed_frames_and_patches  # noqa: E402
from lam.seeds.select import select_seeds  # noqa: E402
from lam.train import TrainSettings, train_head  # noqa: E402

POOL_DRIVES = ("0006R0", "0001TP")


def load_split(
    root: Path, split: str, drives: tuple[str, ...] | None, step: int = 1, scale: float = 1.0
):
    """[(stem, (H, W, 3) uint8, (H, W) uint8)] of a CamVid split, sorted by stem, resized by
    `scale` (bilinear for frames, nearest for labels)."""
    stems = sorted(p.stem for p in (root / split / "images").glob("*.jpg"))
    if drives:
        stems = [s for s in stems if s.split("_")[0] in drives]
    out = []
    for stem in stems[::step]:
        img = decode_image((root / split / "images" / f"{stem}.jpg").read_bytes(), stem)
        lab = decode_label((root / split / "labels" / f"{stem}.png").read_bytes(), stem)
        if scale != 1.0:
            size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
            img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
            lab = np.asarray(Image.fromarray(lab).resize(size, Image.NEAREST))
        out.append((stem, img, lab))
    return out


def train_and_score(classes: dict, backbone, images, labels, val, settings: TrainSettings) -> float:
    """Train a fresh head on (images, labels), return mIoU (%) on `val` [(stem, img, lab)]."""
    class_list = ClassList.from_json(classes)
    model = build_lam(LamConfig(classes=classes), backbone=backbone)
    train_head(model, images, labels, class_list.ignore_index, settings)
    acc = ConfusionAccumulator(class_list.num_classes, class_list.ignore_index)
    preds = Annotator(model, device="cpu").predict([v[1] for v in val])
    for pred, (_, _, lab) in zip(preds, val):
        acc.update(pred.label, lab)
    return 100.0 * acc.scores().miou


def neighbour_sets(stems: list[str], chosen: list[int], count: int) -> list[list[int]]:
    """`count` variants of the pool indices `chosen`, every seed moved by the same offset
    (+1, -1, +2, -2, ...) in capture order; a seed whose neighbour is in another drive (or
    outside the pool) moves the other way. Variants that collide with a chosen frame are kept:
    near-duplicates are the point."""
    drive = [s.split("_")[0] for s in stems]
    offsets = [sign * k for k in range(1, count + 1) for sign in (1, -1)][:count]
    variants = []
    for off in offsets:
        moved = []
        for i in chosen:
            j = i + off
            if not (0 <= j < len(stems) and drive[j] == drive[i]):
                j = i - off
            moved.append(j if 0 <= j < len(stems) and drive[j] == drive[i] else i)
        variants.append(moved)
    return variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--camvid", default=os.environ.get("LAMFLOW_CAMVID", "../shared/data/camvid"))
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--val-step", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["typiclust", "kcenter"])
    ap.add_argument("--scale", type=float, default=0.5, help="resize frames (speed)")
    ap.add_argument("--train-scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--dedupe-threshold", type=float, default=0.9)
    ap.add_argument(
        "--targets", choices=["val", "none"], default="val", help="frames the seeds serve"
    )
    ap.add_argument(
        "--start",
        choices=["typical", "patches"],
        default="typical",
        help="k-center's first seed: most typical frame, or best patch coverage of the targets",
    )
    ap.add_argument(
        "--neighbours",
        type=int,
        default=0,
        help="also score N variants of each selected set shifted along capture order",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on busy hosts)")
    ap.add_argument("--out", default="outputs/bench/seeds.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = Path(args.camvid)
    classes = json.loads((root / "classes.json").read_text())
    t0 = time.perf_counter()
    pool = load_split(root, "train", POOL_DRIVES, scale=args.scale)
    val = load_split(root, "val", None, args.val_step, scale=args.scale)
    backbone = build_backbone("efficientnet_lite0").eval()
    with tqdm(total=len(pool), desc="embed", unit="frame") as bar:
        emb, patches = embed_frames_and_patches(backbone, [p[1] for p in pool], progress=bar.update)
    targets = target_patches = None
    if args.targets == "val":
        frames = [v[1] for v in load_split(root, "val", None, 1, scale=args.scale)]
        with tqdm(total=len(frames), desc="embed targets", unit="frame") as bar:
            targets, target_patches = embed_frames_and_patches(
                backbone, frames, progress=bar.update
            )
    if args.start != "patches":
        patches = target_patches = None
    settings = TrainSettings(iterations=args.iterations, scales=tuple(args.train_scales))
    results: dict = {
        "pool": f"CamVid train drives {'+'.join(POOL_DRIVES)} ({len(pool)} frames)",
        "val": f"CamVid val every {args.val_step}th frame ({len(val)} frames)",
        "frame_scale": args.scale,
        "train_settings": {"iterations": args.iterations, "scales": args.train_scales},
        "methods": args.methods,
        "dedupe_threshold": args.dedupe_threshold,
        "targets": "every CamVid val frame (pixels only)" if targets is not None else "none",
        "kcenter_start": args.start,
        "neighbours": args.neighbours,
        "budgets": {},
    }
    rng = np.random.default_rng(0)
    for budget in args.budgets:
        row: dict = {}
        for method in args.methods:
            sel = select_seeds(
                emb,
                budget,
                method=method,
                dedupe_threshold=args.dedupe_threshold,
                targets=targets,
                patches=patches,
                target_patches=target_patches,
            )
            idx = [s.index for s in sel.seeds]
            ims, labs = [pool[i][1] for i in idx], [pool[i][2] for i in idx]
            miou = train_and_score(classes, backbone, ims, labs, val, settings)
            row[method] = {"stems": [pool[i][0] for i in idx], "miou": round(miou, 2)}
            print(f"B={budget} {method}: {miou:.2f} {row[method]['stems']}", flush=True)
            if args.neighbours:
                stems = [p[0] for p in pool]
                shifted = []
                for variant in neighbour_sets(stems, idx, args.neighbours):
                    ims, labs = [pool[i][1] for i in variant], [pool[i][2] for i in variant]
                    score = train_and_score(classes, backbone, ims, labs, val, settings)
                    shifted.append({"stems": [stems[i] for i in variant], "miou": round(score, 2)})
                    print(f"  neighbours {shifted[-1]['stems']}: {score:.2f}", flush=True)
                scores = [v["miou"] for v in shifted]
                row[method]["neighbours"] = {
                    "sets": shifted,
                    "mean": round(float(np.mean(scores)), 2),
                    "std": round(float(np.std(scores)), 2),
                }
        randoms = []
        for _ in tqdm(range(args.draws), desc=f"random B={budget}", leave=False):
            draw = rng.choice(len(pool), size=budget, replace=False)
            ims, labs = [pool[i][1] for i in draw], [pool[i][2] for i in draw]
            randoms.append(train_and_score(classes, backbone, ims, labs, val, settings))
        mean, std = float(np.mean(randoms)), float(np.std(randoms))
        row["random_mious"] = [round(r, 2) for r in randoms]
        row["random_mean"], row["random_std"] = round(mean, 2), round(std, 2)
        for method in args.methods:
            row[method]["meets_target"] = bool(row[method]["miou"] >= mean + std)
            if "neighbours" in row[method]:
                n = row[method]["neighbours"]
                n["sets_meeting_target"] = sum(v["miou"] >= mean + std for v in n["sets"])
        results["budgets"][str(budget)] = row
        print(
            f"B={budget}: "
            + ", ".join(f"{m} {row[m]['miou']:.2f}" for m in args.methods)
            + f" vs random {mean:.2f} ± {std:.2f}",
            flush=True,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
