"""`lamflow demo`: train on the CamVid seeds, label the val drive, print the scores (what `make
demo` runs). Calls the train, annotate, adapt and evaluate stages; it is not a stage itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lamflow.params import load_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train on CamVid seeds, label the val drive, print scores")
    p.add_argument(
        "--camvid",
        default=None,
        help="CamVid root (default $LAMFLOW_CAMVID or ../shared/data/camvid)",
    )
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--seeds", nargs="*", default=None, metavar="STEM")
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--adapt",
        action="store_true",
        help="also adapt the model to the val drive's frames (pixels only) and score that",
    )
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from lamflow.params import default_camvid
    from tasks.annotate import annotate
    from tasks.evaluate import evaluate
    from tasks.train import train

    params = load_params(args.params)
    camvid = Path(args.camvid or default_camvid())
    if not (camvid / "classes.json").exists():
        print(
            f"lamflow: error: CamVid not found at {camvid} (set --camvid or LAMFLOW_CAMVID)",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    seeds = args.seeds or params.train.seeds  # one seed list: params.yaml's train.seeds
    if not seeds:
        print("lamflow: error: no seeds: pass --seeds or set train.seeds", file=sys.stderr)
        return 2
    print(
        f"[1/3] training on {len(seeds)} seed frame(s) from drives other than val's: "
        f"{' '.join(seeds)}",
        file=sys.stderr,
    )
    # The val drive is the drop being labelled, so train gets its frames as the nightly flow
    # gets a night's drops: unlabeled (train.unlabeled_method; their labels are never read).
    summary = train(
        str(camvid / "train/images"),
        str(camvid / "train/labels"),
        str(camvid / "classes.json"),
        seeds,
        str(out / "model"),
        params.model,
        params.train,
        unlabeled=[str(camvid / "val/images")],
    )
    print(f"      model {summary['model_version']} in {summary['seconds']}s", file=sys.stderr)
    read = summary["unlabeled"]["frames"]
    if read:
        print(
            f"      {summary['unlabeled']['method']}: read the pixels of {len(read)} val frames "
            "(never their labels)",
            file=sys.stderr,
        )
    if summary.get("weights"):  # a source network: say what its weights allow
        weights = summary["weights"]
        print(f"      weights {weights['file']}: {weights['licence']}", file=sys.stderr)
    print(
        "[2/3] labeling the val drive (0016E5: no label of it was read in training)",
        file=sys.stderr,
    )
    ann = params.annotate.model_copy(update={"write_overlays": 8})
    result = annotate(str(out / "model"), str(camvid / "val/images"), str(out / "val"), ann)
    print(
        f"      {result.labeled} frames at {result.frames_per_second} frames/s -> {out / 'val'}",
        file=sys.stderr,
    )
    print("[3/3] scoring against the val labels", file=sys.stderr)
    scores = evaluate(
        str(out / "val"), str(camvid / "val/labels"), str(camvid / "classes.json"), seeds
    )
    doc = {
        "miou": scores["miou"],
        "mf1": scores["mf1"],
        "n_images": scores["n_images"],
        "per_class_iou": {k: v["iou"] for k, v in scores["per_class"].items()},
        "overlays": str(out / "val/overlays"),
    }
    if args.adapt:
        doc["adapted"] = _demo_adapt(camvid, out, params, ann, seeds)
    print(json.dumps(doc, indent=2))
    return 0


def _demo_adapt(camvid: Path, out: Path, params: Any, ann: Any, seeds: list[str]) -> dict:
    """`demo --adapt`: self-train on the val drive's frames, relabel it, score again."""
    from tasks.adapt import adapt
    from tasks.annotate import annotate
    from tasks.evaluate import evaluate

    print("[+] adapting the model to the val drive's frames (pixels only)", file=sys.stderr)
    report = adapt(
        str(out / "model"),
        str(camvid / "val/images"),
        str(camvid / "train/images"),
        str(camvid / "train/labels"),
        str(out / "model_adapted"),
        params.adapt,
    )
    print(
        f"    model {report['model_version']} in {report['seconds']}s "
        f"({len(report['frames'])} frames)",
        file=sys.stderr,
    )
    annotate(str(out / "model_adapted"), str(camvid / "val/images"), str(out / "val_adapted"), ann)
    scores = evaluate(
        str(out / "val_adapted"), str(camvid / "val/labels"), str(camvid / "classes.json"), seeds
    )
    return {
        "miou": scores["miou"],
        "mf1": scores["mf1"],
        "adapt_seconds": report["seconds"],
        "per_class_iou": {k: v["iou"] for k, v in scores["per_class"].items()},
        "overlays": str(out / "val_adapted/overlays"),
    }
