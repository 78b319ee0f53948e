"""`lamflow train | adapt | annotate | evaluate | demo`: the annotator on folders of frames."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lamflow.params import load_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the annotator from seed frames")
    p.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="URL",
        help="folder(s) of seed frames STEM.jpg/.png (a stem is taken from the first holding it)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=[],
        metavar="URL",
        help="folder(s) of label PNGs STEM.png (class ids): one, or one per --images folder",
    )
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--seeds", nargs="*", default=[], metavar="STEM", help="seed frame stems")
    p.add_argument(
        "--seed-set",
        default="",
        metavar="URL",
        help="a seed set folder (images/, labels/, provenance/): all its seeds are used",
    )
    p.add_argument(
        "--unlabeled",
        nargs="+",
        default=[],
        metavar="URL",
        help="folder(s) of frames whose labels are never read: the drop(s) to be labeled",
    )
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--params", default="params.yaml", help="params file (model + train sections)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "adapt", help="optional: self-train a trained model on a drop's frames (new model dir)"
    )
    p.add_argument("--model", required=True, help="model directory from `lamflow train`")
    p.add_argument("--images", required=True, help="folder (URL) of the drop's frames")
    p.add_argument("--seed-images", required=True, help="folder holding the model's seed frames")
    p.add_argument("--seed-labels", required=True, help="folder holding their label PNGs")
    p.add_argument("--out", required=True, help="new model directory to write")
    p.add_argument("--params", default="params.yaml", help="params file (adapt section)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.set_defaults(func=_adapt)

    p = sub.add_parser("annotate", help="label every frame of a folder")
    p.add_argument("--model", required=True, help="model directory from `lamflow train`")
    p.add_argument("--images", required=True, help="folder (URL) of frames")
    p.add_argument(
        "--out", required=True, help="output folder: labels/, confidence/, manifest.jsonl"
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--overlays", type=int, default=None, help="write overlays for the first N frames"
    )
    p.set_defaults(func=_annotate)

    p = sub.add_parser("evaluate", help="score predicted label PNGs against ground truth")
    p.add_argument("--pred", required=True, help="annotate output folder or folder of label PNGs")
    p.add_argument("--labels", required=True, help="ground-truth label folder")
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--exclude", nargs="*", default=[], metavar="STEM", help="stems not to score")
    p.set_defaults(func=_evaluate)

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


def _train(args: argparse.Namespace) -> int:
    from tasks.train import train

    params = load_params(args.params, args.set)
    summary = train(
        args.images,
        args.labels,
        args.classes,
        args.seeds,
        args.out,
        params.model,
        params.train,
        progress=not args.no_progress,
        unlabeled=args.unlabeled,
        seed_set=args.seed_set,
    )
    keys = ("model_version", "out", "seconds", "final_loss", "unseen_classes")
    print(json.dumps({k: summary[k] for k in keys}))  # unseen classes: tasks.train warns
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from tasks.adapt import adapt

    params = load_params(args.params, args.set)
    report = adapt(
        args.model,
        args.images,
        args.seed_images,
        args.seed_labels,
        args.out,
        params.adapt,
        progress=not args.no_progress,
    )
    keys = ("model_version", "source_version", "seconds", "pseudo_pixels")
    print(json.dumps({k: report[k] for k in keys} | {"frames": len(report["frames"])}))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from tasks.annotate import annotate

    params = load_params(args.params, args.set)
    ann = params.annotate
    if args.overlays is not None:
        ann = ann.model_copy(update={"write_overlays": args.overlays})
    summary = annotate(args.model, args.images, args.out, ann)
    print(json.dumps(summary.as_dict()))
    if summary.quarantined:
        print(f"lamflow: warning: {len(summary.quarantined)} frame(s) quarantined", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tasks.evaluate import evaluate

    print(json.dumps(evaluate(args.pred, args.labels, args.classes, args.exclude), indent=2))
    return 0


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
    summary = train(
        str(camvid / "train/images"),
        str(camvid / "train/labels"),
        str(camvid / "classes.json"),
        seeds,
        str(out / "model"),
        params.model,
        params.train,
    )
    print(f"      model {summary['model_version']} in {summary['seconds']}s", file=sys.stderr)
    print("[2/3] labeling the val drive (0016E5, never seen in training)", file=sys.stderr)
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
