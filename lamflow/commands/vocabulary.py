"""`lamflow vocabulary`: discover which classes a folder of frames contains."""

from __future__ import annotations

import argparse
import json
import sys

from lamflow.params import load_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocabulary", help="propose, filter, group and map a drop's labels")
    p.add_argument("--images", required=True, help="folder (URL) of frames")
    p.add_argument("--out", required=True, help="vocabulary.yaml to write (URL)")
    p.add_argument("--target", default=None, help="classes.json to map synsets onto")
    p.add_argument("--params", default="params.yaml", help="params file (vocabulary section)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_vocabulary)


def _vocabulary(args: argparse.Namespace) -> int:
    from tasks.vocabulary import vocabulary

    params = load_params(args.params, args.set)
    doc = vocabulary(
        args.images, args.out, params.vocabulary, args.target, progress=not args.no_progress
    )
    top = [{"synset": s["name"], "score": s["score"]} for s in doc["synsets"][:10]]
    print(json.dumps({"out": args.out, "frames": doc["frames"], "top_synsets": top}))
    if doc["frames"]["skipped"]:
        print(
            f"lamflow: warning: {doc['frames']['skipped']} frame(s) could not be decoded",
            file=sys.stderr,
        )
    return 0
