"""`lamflow s3 up|down|env` (the project's SeaweedFS) and `lamflow versions list|lineage|restore`
(what the nightly flow versioned with DVC: docs/versioning.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lamflow.params import load_params

from .stages import common_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("s3", help="the project's SeaweedFS S3 server on 127.0.0.1")
    p.add_argument("action", choices=("up", "down", "env"))
    p.add_argument("--port", type=int, default=8333)
    p.add_argument("--dir", type=Path, default=Path(".s3data"))
    p.set_defaults(func=_s3)

    versions = sub.add_parser("versions", help="what the nightly flow versioned (DVC, git tags)")
    vsub = versions.add_subparsers(dest="versions_cmd", required=True, metavar="ACTION")
    p = vsub.add_parser("list", help="every run's tag, newest first")
    common_options(p)
    p.add_argument("--workspace", default=None, help="default: versioning.workspace")
    p.set_defaults(func=_versions_list)
    p = vsub.add_parser("lineage", help="which seed set, vocabulary and model made a drop's labels")
    common_options(p)
    p.add_argument("--workspace", default=None, help="default: versioning.workspace")
    p.add_argument("--rev", default="HEAD", help="a run's tag (run-RUN_ID) or a commit")
    p.add_argument("--drive", required=True)
    p.set_defaults(func=_versions_lineage)
    p = vsub.add_parser("restore", help="get versioned files back, byte for byte")
    common_options(p)
    p.add_argument("--workspace", default=None, help="default: versioning.workspace")
    p.add_argument("--rev", required=True, help="a run's tag (run-RUN_ID) or a commit")
    p.add_argument("--path", required=True, help="seeds, models/VERSION, labels/DRIVE, ...")
    p.add_argument("--out", required=True, help="local folder to write")
    p.set_defaults(func=_versions_restore)


def _workspace(args: argparse.Namespace) -> str:
    from tasks.version import workspace_path

    if args.workspace:
        return str(args.workspace)
    params = load_params(args.params, args.set)
    return str(workspace_path(params.versioning, params.data.root))


def _versions_list(args: argparse.Namespace) -> int:
    from tasks.version import list_versions

    print(json.dumps(list_versions(_workspace(args)), indent=1))
    return 0


def _versions_lineage(args: argparse.Namespace) -> int:
    from tasks.version import lineage

    print(json.dumps(lineage(_workspace(args), args.rev, args.drive), indent=1))
    return 0


def _versions_restore(args: argparse.Namespace) -> int:
    from tasks.version import restore

    files = restore(_workspace(args), args.rev, args.path, args.out)
    print(json.dumps({"out": args.out, "files": len(files)}))
    return 0


def _s3(args: argparse.Namespace) -> int:
    from lamflow import s3server

    if args.action == "up":
        print(f"SeaweedFS S3 on {s3server.up(args.dir, args.port)}; credentials: lamflow s3 env")
    elif args.action == "down":
        print("stopped" if s3server.down(args.dir) else "no server was running")
    else:
        print("\n".join(s3server.env_lines(args.dir)))
    return 0
