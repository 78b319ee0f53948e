"""Honest few-seed quality on CamVid: seeds from drives 0006R0/0001TP, scored on val (0016E5).

Prints JSON: mIoU/mF1 for 1 and 5 seeds (averaged over deterministic seed draws), with and
without the optional adaptation step (self-training on val frames' pixels only, never their
labels), plus train and adapt seconds. With `--select`, also for the 1 and 5 seeds that
`select_seeds` (k-center, default settings) picks from the same pool for the val frames
(`targets`: their pixels, never their labels): the seeds the product would ask a human for;
and for those plus the frames its coverage pass adds so that every class the pool's labels
show is in some seed (`*_plus_coverage`; the pool is a labelled archive).

    .venv/bin/python bench/quality.py [--camvid PATH] [--draws1 3] [--draws5 3] [--val-step 2]
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
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lam.adapt import AdaptSettings, adapt_to_frames  # noqa: E402
from lam.build import LamConfig, build_backbone, build_lam  # noqa: E402
from lam.metrics import ConfusionAccumulator  # noqa: E402
from lam.seeds.embed import embed_frames  # noqa: E402
from lam.seeds.select import select_seeds  # noqa: E402
from lam.train import TrainSettings, train_head  # noqa: E402
from tasks.select_seeds import class_presence  # noqa: E402

SEED_DRIVES = ("0006R0", "0001TP")


def _load(root: Path, split: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.array(Image.open(root / split / "images" / f"{stem}.jpg").convert("RGB"))
    label = np.array(Image.open(root / split / "labels" / f"{stem}.png"))
    return image, label


def seed_draws(pool: list[str], n_seeds: int, n_draws: int) -> list[list[str]]:
    """Deterministic, evenly spaced draws of `n_seeds` frames; draw d is shifted by d/n_draws."""
    draws = []
    step = len(pool) / n_seeds
    for d in range(n_draws):
        offset = step * (d + 0.5) / n_draws
        draws.append([pool[int(offset + i * step) % len(pool)] for i in range(n_seeds)])
    return draws


@torch.inference_mode()
def evaluate(model, val_taps, val_images, val_labels, num_classes: int, ignore: int) -> dict:
    acc = ConfusionAccumulator(num_classes, ignore)
    for taps, image, label in zip(val_taps, val_images, val_labels):
        logits = model.head(taps, image)
        logits = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
        acc.update(logits.argmax(1)[0].numpy(), label)
    scores = acc.scores()
    return {"miou": round(100 * scores.miou, 2), "mf1": round(100 * scores.mf1, 2)}


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get("LAMFLOW_CAMVID", str(ROOT / ".." / "shared" / "data" / "camvid"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", default=default_root)
    parser.add_argument("--backbone", default=LamConfig.backbone)
    parser.add_argument("--draws1", type=int, default=3, help="seed draws for the 1-seed score")
    parser.add_argument("--draws5", type=int, default=3, help="seed draws for the 5-seed score")
    parser.add_argument("--val-step", type=int, default=1, help="score every n-th val frame")
    parser.add_argument("--no-adapt", action="store_true")
    parser.add_argument(
        "--select", action="store_true", help="also score the seeds select_seeds picks (B=1, 5)"
    )
    args = parser.parse_args(argv)
    root = Path(args.camvid)
    if not (root / "classes.json").is_file():
        print(f"error: no CamVid at {root} (set --camvid or LAMFLOW_CAMVID)", file=sys.stderr)
        return 2
    classes = json.loads((root / "classes.json").read_text())
    config = LamConfig(classes=classes, backbone=args.backbone)
    cl = config.class_list
    backbone = build_backbone(config.backbone, config.backbone_options)
    train_stems = sorted(p.stem for p in (root / "train" / "images").glob("*.jpg"))
    pool = [s for s in train_stems if s.split("_")[0] in SEED_DRIVES]
    val_stems = sorted(p.stem for p in (root / "val" / "images").glob("*.jpg"))
    val = [_load(root, "val", s) for s in val_stems[:: args.val_step]]
    all_val_images = [_load(root, "val", s)[0] for s in val_stems]
    model = build_lam(config, backbone=backbone)
    val_images = [torch.from_numpy(im).permute(2, 0, 1)[None] for im, _ in val]
    val_taps = [model.extract(x) for x in val_images]
    val_labels = [lb for _, lb in val]

    def run(draw: list[str], tag: str) -> dict:
        """Train on the seed frames `draw`, score on val, then adapt and score again."""
        model = build_lam(config, backbone=backbone)
        seeds = [_load(root, "train", s) for s in draw]
        images, labels = [s[0] for s in seeds], [s[1] for s in seeds]
        report = train_head(model, images, labels, cl.ignore_index, TrainSettings())
        row = {"seeds": draw, "train_s": round(report.seconds, 2)}
        row["plain"] = evaluate(
            model, val_taps, val_images, val_labels, cl.num_classes, cl.ignore_index
        )
        if not args.no_adapt:
            t = time.perf_counter()
            ad = adapt_to_frames(
                model, images, labels, all_val_images, cl.ignore_index, AdaptSettings()
            )
            row["adapt_s"] = round(time.perf_counter() - t, 2)
            row["adapted"] = evaluate(
                model, val_taps, val_images, val_labels, cl.num_classes, cl.ignore_index
            )
            row["pseudo_pixels"] = ad.pseudo_pixels
        print(json.dumps({tag: row}), file=sys.stderr, flush=True)
        return row

    def summarise(rows: list[dict]) -> dict:
        summary = {
            "draws": rows,
            "miou": round(float(np.mean([r["plain"]["miou"] for r in rows])), 2),
            "mf1": round(float(np.mean([r["plain"]["mf1"] for r in rows])), 2),
            "train_s": round(float(np.mean([r["train_s"] for r in rows])), 2),
        }
        if not args.no_adapt:
            summary["adapted_miou"] = round(float(np.mean([r["adapted"]["miou"] for r in rows])), 2)
            summary["adapted_mf1"] = round(float(np.mean([r["adapted"]["mf1"] for r in rows])), 2)
            summary["adapt_s"] = round(float(np.mean([r["adapt_s"] for r in rows])), 2)
        return summary

    results: dict = {"backbone": config.backbone, "val_frames": len(val), "runs": {}}
    for n_seeds, n_draws in ((1, args.draws1), (5, args.draws5)):
        if n_draws <= 0:
            continue
        rows = [run(draw, f"{n_seeds}seed") for draw in seed_draws(pool, n_seeds, n_draws)]
        results["runs"][f"{n_seeds}_seed"] = summarise(rows)
    if args.select:
        pool_frames = [_load(root, "train", s) for s in pool]
        pool_emb = embed_frames(backbone, [image for image, _ in pool_frames])
        targets = embed_frames(backbone, all_val_images)
        # The pool is a labelled archive, so which classes each frame shows is known (read as
        # `lamflow select-seeds --labels` reads it): the coverage pass adds frames until every
        # class the archive shows is in some seed.
        presence = class_presence(str(root / "train" / "labels"), pool, cl)
        for budget in (1, 5):
            picked = select_seeds(pool_emb, budget, targets=targets).seeds
            draw = [pool[s.index] for s in picked]
            results["runs"][f"{budget}_seed_selected"] = summarise([run(draw, f"{budget}selected")])
            covered = select_seeds(
                pool_emb, budget, targets=targets, presence=presence, class_names=list(cl.names)
            ).seeds
            if len(covered) > budget:
                draw = [pool[s.index] for s in covered]
                results["runs"][f"{budget}_seed_selected_plus_coverage"] = summarise(
                    [run(draw, f"{budget}selected+coverage")]
                )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
