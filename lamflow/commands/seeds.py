"""`lamflow select-seeds | seed-masks | review export|import | export-coco`."""

from __future__ import annotations

import argparse
import json

from lamflow.params import load_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select-seeds", help="pick the frames of a drop worth annotating")
    p.add_argument("--images", required=True, help="folder (URL) of the drop's frames")
    p.add_argument("--out", required=True, help="seeds.yaml to write")
    p.add_argument("--vocabulary", default=None, help="classes to cover (vocabulary.yaml, ...)")
    p.add_argument("--labels", default=None, help="annotate output / label PNGs: class presence")
    p.add_argument("--classes", default=None, help="classes.json (needed with --labels)")
    p.add_argument(
        "--targets", default=None, help="folder (URL) of the frames to label, if not --images"
    )
    p.add_argument("--budget", type=int, default=None, help="override select_seeds.budget")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_select_seeds)

    p = sub.add_parser("seed-masks", help="turn prompt files (clicks/boxes/...) into seed masks")
    p.add_argument("--images", required=True, help="folder (URL) of frames")
    p.add_argument("--prompts", required=True, help="folder of prompt files STEM.json")
    p.add_argument(
        "--allow-empty", action="store_true", help="no prompt files yet is not an error (pipelines)"
    )
    p.add_argument("--out", required=True, help="folder for seed label PNGs")
    p.add_argument("--classes", default=None, help="classes.json (default: PROMPTS/classes.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_seed_masks)

    p = sub.add_parser("review", help="human review round-trip with CVAT / Label Studio")
    rsub = p.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    e = rsub.add_parser("export", help="write a CVAT / Label Studio task")
    e.add_argument("--images", required=True)
    e.add_argument("--out", required=True, help="file to write (.xml / .zip / .json)")
    e.add_argument("--classes", required=True)
    e.add_argument("--format", default="cvat", choices=["cvat", "cityscapes", "labelstudio"])
    e.add_argument("--seeds", default=None, help="seeds.yaml from select-seeds")
    e.add_argument("--flagged", default=None, help="review.json from qc")
    e.add_argument("--stems", nargs="*", default=None, metavar="STEM")
    e.add_argument("--labels", default=None, help="labels to pre-fill (folder or annotate out)")
    e.add_argument("--image-root", default="", help="URL prefix Label Studio loads images from")
    e.set_defaults(func=_review_export)
    i = rsub.add_parser("import", help="read corrected annotations back as seed labels")
    i.add_argument("--src", required=True, help="CVAT XML / Cityscapes zip / Label Studio JSON")
    i.add_argument("--out", required=True, help="folder for label PNGs")
    i.add_argument("--classes", required=True)
    i.add_argument("--format", default=None, choices=["cvat", "cityscapes", "labelstudio"])
    i.set_defaults(func=_review_import)

    p = sub.add_parser("export-coco", help="a labeled drop as COCO JSON with RLE masks")
    p.add_argument("--labels", required=True, help="annotate output folder or label PNGs")
    p.add_argument("--out", required=True, help="COCO JSON to write")
    p.add_argument("--classes", required=True)
    p.set_defaults(func=_export_coco)


def _select_seeds(args: argparse.Namespace) -> int:
    from tasks.select_seeds import select_seeds

    params = load_params(args.params, args.set).select_seeds
    if args.budget is not None:
        params = params.model_copy(update={"budget": args.budget})
    doc = select_seeds(
        args.images,
        args.out,
        params,
        args.vocabulary,
        progress=not args.no_progress,
        labels=args.labels,
        classes=args.classes,
        targets=args.targets,
    )
    print(json.dumps({"out": args.out, "seeds": [s["stem"] for s in doc["seeds"]]}))
    return 0


def _seed_masks(args: argparse.Namespace) -> int:
    from tasks.seed_masks import seed_masks

    params = load_params(args.params, args.set).seed_masks
    summary = seed_masks(
        args.images,
        args.prompts,
        args.out,
        params,
        not args.no_progress,
        classes=args.classes,
        allow_empty=args.allow_empty,
    )
    print(json.dumps(summary))
    return 0


def _review_export(args: argparse.Namespace) -> int:
    from tasks.review import review_export

    result = review_export(
        args.images,
        args.out,
        args.classes,
        args.format,
        seeds=args.seeds,
        flagged=args.flagged,
        labels=args.labels,
        stems=args.stems,
        image_root=args.image_root,
    )
    print(json.dumps(result))
    return 0


def _review_import(args: argparse.Namespace) -> int:
    from tasks.review import review_import

    print(json.dumps(review_import(args.src, args.out, args.classes, args.format)))
    return 0


def _export_coco(args: argparse.Namespace) -> int:
    from tasks.review import export_coco

    print(json.dumps(export_coco(args.labels, args.out, args.classes)))
    return 0
