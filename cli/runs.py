"""`lamflow nightly | bootstrap | serve | drop add|accept`: the Prefect flows and the drops
they work on. The flows themselves only compose stages (flows/); these commands start them."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from lamflow.params import Params, load_params
from lamflow.storage import join

from .stages import common_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nightly", help="label every new drop under data.root (Prefect flow)")
    common_options(p)
    p.add_argument("--drive", nargs="*", default=None, help="only these drops")
    p.add_argument("--dask-address", default=None, help="existing Dask scheduler (tcp://...)")
    p.set_defaults(func=_nightly)

    p = sub.add_parser("bootstrap", help="add a first drop, train from seeds, label it")
    common_options(p)
    p.add_argument("--source", required=True, help="folder (URL) of the first drop's frames")
    p.add_argument("--drive", required=True, help="drive id of that drop")
    p.add_argument("--dask-address", default=None)
    p.set_defaults(func=_bootstrap)

    p = sub.add_parser("serve", help="serve the nightly deployment on its cron (one process)")
    common_options(p)
    p.add_argument("--cron", default=None, help="cron schedule (default: pipeline.schedule)")
    p.set_defaults(func=_serve)

    drop = sub.add_parser("drop", help="manage drops under data.root")
    dsub = drop.add_subparsers(dest="drop_cmd", required=True, metavar="ACTION")
    p = dsub.add_parser("add", help="copy a folder of frames in as a new drop")
    common_options(p)
    p.add_argument("source", help="folder (URL) of frames")
    p.add_argument("--drive", required=True)
    p.add_argument("--repeat", type=int, default=1, help="copy each frame N times (benchmarks)")
    p.add_argument("--limit", type=int, default=0, help="only the first N frames")
    p.add_argument("--root", default=None, help="ROOT (default: data.root)")
    p.set_defaults(func=_drop_add)
    p = dsub.add_parser(
        "accept",
        help="accept a drop whose QC failed: the next nightly run exports it and marks it done",
    )
    common_options(p)
    p.add_argument("drive")
    p.add_argument("--by", default=os.environ.get("USER", ""), help="who accepts (recorded)")
    p.add_argument("--note", default="", help="why (recorded)")
    p.add_argument("--root", default=None, help="ROOT (default: data.root)")
    p.set_defaults(func=_drop_accept)


def _prefect_env() -> None:
    """Without PREFECT_API_URL, Prefect starts a temporary local server; on a busy machine its
    default 20 s start-up limit is too short. Must run before prefect is imported."""
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _flow_with_runner(flow_obj: Any, address: str | None, params: Params) -> Any:
    from flows.nightly import dask_runner

    runner = dask_runner(
        address or params.pipeline.dask_address,
        params.pipeline.dask_workers,
        params.pipeline.dask_processes,
    )
    return flow_obj.with_options(task_runner=runner)


def _nightly(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.nightly import nightly, shared_prefect_api

    params = load_params(args.params, args.set)
    run = _flow_with_runner(nightly, args.dask_address, params)
    with shared_prefect_api():
        result = run(params_file=args.params, overrides=args.set, drives=args.drive)
    print(json.dumps(result, indent=1, default=str))
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.nightly import bootstrap, shared_prefect_api

    params = load_params(args.params, args.set)
    run = _flow_with_runner(bootstrap, args.dask_address, params)
    with shared_prefect_api():
        result = run(
            source=args.source, drive=args.drive, params_file=args.params, overrides=args.set
        )
    print(json.dumps(result, indent=1, default=str))
    return 0


def _serve(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.nightly import nightly

    params = load_params(args.params, args.set)
    cron = args.cron or params.pipeline.schedule
    print(
        f"serving deployment nightly/lamflow-nightly on cron {cron!r} ({params.pipeline.timezone})"
    )
    from prefect.schedules import Cron

    from flows.nightly import shared_prefect_api

    with shared_prefect_api():  # Dask workers of served runs report to the same API
        _flow_with_runner(nightly, None, params).serve(
            name="lamflow-nightly",
            schedules=[Cron(cron, timezone=params.pipeline.timezone)],
            parameters={"params_file": args.params, "overrides": args.set},
        )
    return 0


def _drop_add(args: argparse.Namespace) -> int:
    from tasks.ingest import add_drop, drop_url

    params = load_params(args.params, args.set)
    root = args.root or params.data.root
    n = add_drop(args.source, root, args.drive, args.repeat, args.limit)
    print(
        json.dumps(
            {"drive": args.drive, "frames": n, "images": join(drop_url(root, args.drive), "images")}
        )
    )
    return 0


def _drop_accept(args: argparse.Namespace) -> int:
    from flows.state import accept_drop

    params = load_params(args.params, args.set)
    record = accept_drop(args.root or params.data.root, args.drive, args.by, args.note)
    print(json.dumps(record))
    return 0
