"""Label quality that cannot be tuned to the reported split: cross-drive folds, then val once.

Every run calls the real stages: `tasks.train.train` (seeds + the target drive's frames as
`--unlabeled`), `tasks.annotate.annotate`, `tasks.evaluate.evaluate`, in a scratch folder.

Folds (inside CamVid's train split; choose defaults on these): each train drive in turn is the
target T. Seeds are N frames of the other two drives (N = 0, 1, 6, 21, evenly spaced over them
by name, or all of them), with or without 4 frames of T itself (the review loop's case: evenly
spaced over the first third of T's frames). Scored on T's other frames that lie >= 300 frame
numbers (10 s) from each of those 4, the same frames in both cases. T's frames are the drop:
`train` sees them unlabeled.

Val (report once, for the chosen defaults): T = 0016E5, scored on CamVid val (0016E5_07959 to
08159); seeds from 0001TP/0006R0, and in the loop case 4 train frames of 0016E5 evenly spaced
over those >= 300 frame numbers from every val frame. The val frames are the drop.

    .venv/bin/python bench/quality.py [--camvid PATH] [--counts 1 6 21 all] [--no-val]
        [--set train.KEY=VALUE ...] [--out bench_quality.json]

Prints one JSON line per run on stderr and the summary (fold mean +- std per case, val,
per-class IoU) as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lam.build import SOURCE_NETWORKS  # noqa: E402
from lamflow.params import load_params  # noqa: E402
from tasks.annotate import annotate  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.train import train  # noqa: E402

DRIVES = ("0001TP", "0006R0", "0016E5")
VAL_DRIVE = "0016E5"
SAME_DRIVE_FRAMES = 4
MIN_GAP = 300  # frame numbers between a same-drive seed and any frame it is scored on
THIN = ("pole", "sign", "pedestrian", "bicyclist")


def frame_number(stem: str) -> int:
    """'0006R0_f01110' -> 1110; CamVid stems are DRIVE_[f]NUMBER."""
    return int(stem.split("_", 1)[1].lstrip("f"))


def evenly(items: list[str], n: int) -> list[str]:
    """n items at the centres of n equal parts of `items` (all of them when n >= len)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(step * (i + 0.5))] for i in range(n)]


def far_from(stems: list[str], anchors: list[str]) -> list[str]:
    return [
        s for s in stems if all(abs(frame_number(s) - frame_number(a)) >= MIN_GAP for a in anchors)
    ]


def _curve(
    split: str,
    target: str,
    pool: list[str],
    same: list[str],
    scored: list[str],
    drop: list[str],
    counts: list[str],
) -> list[dict[str, Any]]:
    """The learning curve of one target: every count of `pool` seeds, without and with `same`."""
    out = []
    for count in counts:
        other = pool if count == "all" else evenly(pool, int(count)) if int(count) else []
        for with_same in (False, True):
            out.append(
                {
                    "split": split,
                    "target": target,
                    "count": count,
                    "same": with_same,
                    "seeds": other + (same if with_same else []),
                    "scored": scored,
                    "drop": drop,
                    "drop_split": "val" if split == "val" else "train",
                }
            )
    return out


def cases(camvid: Path, counts: list[str], val: bool) -> list[dict[str, Any]]:
    """Every run: {split, target, count, same, seeds, scored, drop, drop_split}."""
    train_stems = sorted(p.stem for p in (camvid / "train" / "images").glob("*.jpg"))
    val_stems = sorted(p.stem for p in (camvid / "val" / "images").glob("*.jpg"))
    out = []
    for target in DRIVES:
        drive = sorted((s for s in train_stems if s.startswith(target)), key=frame_number)
        pool = [s for s in train_stems if not s.startswith(target)]
        same = evenly(drive[: len(drive) // 3], SAME_DRIVE_FRAMES)
        out += _curve("folds", target, pool, same, far_from(drive, same), drive, counts)
    if val:
        pool = [s for s in train_stems if not s.startswith(VAL_DRIVE)]
        drive = sorted((s for s in train_stems if s.startswith(VAL_DRIVE)), key=frame_number)
        same = evenly(far_from(drive, val_stems), SAME_DRIVE_FRAMES)
        out += _curve("val", VAL_DRIVE, pool, same, val_stems, val_stems, counts)
    return out


def _link_folder(folder: Path, source: Path, stems: list[str]) -> str:
    """A folder of symlinks to `stems`' frames: the drop, as `train --unlabeled` reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        link = folder / f"{stem}.jpg"
        if not link.exists():
            link.symlink_to(source / f"{stem}.jpg")
    return str(folder)


def run_case(case: dict[str, Any], camvid: Path, params: Any, scratch: Path) -> dict[str, Any]:
    """Train on the case's seeds with its drop unlabeled, label its scored frames, score them."""
    tag = f"{case['split']}-{case['target']}-{case['count']}-{'same' if case['same'] else 'other'}"
    work = scratch / tag
    images = camvid / case["drop_split"] / "images"
    drop = _link_folder(work / "drop", images, case["drop"])
    started = time.perf_counter()
    report = train(
        str(camvid / "train" / "images"),
        str(camvid / "train" / "labels"),
        str(camvid / "classes.json"),
        case["seeds"],
        str(work / "model"),
        params.model,
        params.train,
        progress=False,
        unlabeled=[drop],
        no_seeds=not case["seeds"],  # count 0 without the target's frames: no label at all
    )
    train_s = time.perf_counter() - started
    summary = annotate(
        str(work / "model"),
        str(images),
        str(work / "pred"),
        params.annotate,
        stems=case["scored"],
        progress=False,
    )
    scores = evaluate(
        str(work / "pred"),
        str(camvid / case["drop_split"] / "labels"),
        str(camvid / "classes.json"),
    )
    row = {
        "split": case["split"],
        "target": case["target"],
        "count": case["count"],
        "same": case["same"],
        "seeds": len(case["seeds"]),
        "scored": scores["n_images"],
        "miou": round(scores["miou"], 2),
        # None: a class absent from both the frames and the prediction (no evidence)
        "per_class": {
            k: None if v["iou"] is None else round(v["iou"], 1)
            for k, v in scores["per_class"].items()
        },
        "train_s": round(train_s, 1),
        "annotate_fps": round(summary.labeled / max(summary.seconds, 1e-9), 1),
        "unlabeled_frames": len(report["unlabeled"]["frames"]),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _mean(values: list[float | None]) -> float | None:
    """Mean of the defined values (None where a class had no evidence), or None."""
    defined = [v for v in values if v is not None]
    return round(float(np.mean(defined)), 1) if defined else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (count, same): fold mean +- std of mIoU and mean per-class IoU; val as it is."""
    out: dict[str, Any] = {}
    keys = sorted({(r["count"], r["same"]) for r in rows}, key=lambda k: (str(k[0]), k[1]))
    for count, same in keys:
        name = f"{count}{'+4same' if same else ''}"
        folds = [
            r for r in rows if r["split"] == "folds" and (r["count"], r["same"]) == (count, same)
        ]
        vals = [r for r in rows if r["split"] == "val" and (r["count"], r["same"]) == (count, same)]
        entry: dict[str, Any] = {}
        if folds:
            m = [r["miou"] for r in folds]
            classes = list(folds[0]["per_class"])
            entry["folds"] = {
                "miou_mean": round(float(np.mean(m)), 2),
                "miou_std": round(float(np.std(m)), 2),
                "per_target": {r["target"]: r["miou"] for r in folds},
                "per_class": {c: _mean([r["per_class"][c] for r in folds]) for c in classes},
                "train_s": round(float(np.mean([r["train_s"] for r in folds])), 1),
            }
        if vals:
            entry["val"] = {k: vals[0][k] for k in ("miou", "per_class", "train_s", "annotate_fps")}
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get("LAMFLOW_CAMVID", str(ROOT / ".." / "shared" / "data" / "camvid"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", default=default_root)
    # 0: the model with no seed at all (a source-network backbone's class map from names)
    parser.add_argument("--counts", nargs="+", default=["0", "1", "6", "21", "all"])
    parser.add_argument("--targets", nargs="+", default=list(DRIVES), help="fold targets")
    parser.add_argument("--no-folds", action="store_true")
    parser.add_argument("--no-val", action="store_true")
    parser.add_argument("--only-same", action="store_true", help="only the +4 same-drive cases")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    camvid = Path(args.camvid)
    if not (camvid / "classes.json").is_file():
        print(f"error: no CamVid at {camvid} (set --camvid or LAMFLOW_CAMVID)", file=sys.stderr)
        return 2
    bad = [c for c in args.counts if c != "all" and not c.isdigit()]
    if bad:
        print(f"error: --counts takes numbers >= 0 or 'all', got {bad}", file=sys.stderr)
        return 2
    params = load_params(args.params, args.set)
    todo = [
        c
        for c in cases(camvid, args.counts, not args.no_val)
        if (c["split"] == "val" or (not args.no_folds and c["target"] in args.targets))
        and (c["same"] or not args.only_same)
        # no seed at all needs a network that already knows classes (a source network)
        and (c["seeds"] or params.model.backbone in SOURCE_NETWORKS)
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lamflow-quality-") as scratch:
        for case in todo:
            rows.append(run_case(case, camvid, params, Path(scratch)))
    result = {
        "backbone": params.model.backbone,
        "train": params.train.model_dump(exclude={"seeds"}),
        "summary": summarise(rows),
        "thin_classes_val_6+4same": {
            c: r["per_class"][c]
            for r in rows
            if r["split"] == "val" and r["count"] == "6" and r["same"]
            for c in THIN
        },
        "runs": rows,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
