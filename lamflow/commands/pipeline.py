"""`lamflow stage NAME | nightly | bootstrap | serve | drop add|accept | s3 up|down|env`.

`lamflow stage NAME` calls the plain stage function named in `STAGES`; its command-line options
are made from the function's signature (`images: str` -> `--images URL`, `seeds: list[str]` ->
`--seeds STEM...`), its params section(s) come from params.yaml (+ `--set` overrides), and an
omitted option falls back to the params key named in `defaults`. Adding a stage is one row.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lam.errors import LamflowError
from lamflow.params import Params, load_params
from lamflow.storage import join, write_text_atomic


@dataclass(frozen=True)
class StageSpec:
    """How `lamflow stage NAME` calls a stage.

    target: "module:function" of the plain stage function.
    sections: function argument -> params.yaml section passed to it (validated model).
    defaults: function argument -> params key (dotted, or a name in `_DERIVED`) used when the
        option is not given on the command line.
    """

    target: str
    help: str
    sections: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)


_STAGES: dict[str, StageSpec] = {
    "ingest": StageSpec(
        "tasks.ingest:ingest",
        "register a drop: frames, sha256, size, decode check -> ingest.json",
        {"params": "ingest"},
        {"root": "data.root"},
    ),
    "train": StageSpec(
        "tasks.train:train",
        "train the annotator from the seed frames",
        {"model": "model", "settings": "train"},
        {
            "images": "seed_images",
            "labels": "seed_labels",
            "classes": "classes",
            "seeds": "train.seeds",
        },
    ),
    "annotate": StageSpec(
        "tasks.annotate:annotate", "label a drop (or some stems of it)", {"params": "annotate"}
    ),
    "qc": StageSpec(
        "tasks.qc:qc", "Great Expectations checks over a labeled drop", {"params": "qc"}
    ),
    "export": StageSpec(
        "tasks.export:export", "publish labels in the chosen format", {"params": "export"}
    ),
    "vocabulary": StageSpec(
        "tasks.vocabulary:vocabulary",
        "discover a drop's label vocabulary",
        {"params": "vocabulary"},
    ),
    "select_seeds": StageSpec(
        "tasks.select_seeds:select_seeds",
        "choose the seed frames of a drop",
        {"params": "select_seeds"},
    ),
    "seed_masks": StageSpec(
        "tasks.seed_masks:seed_masks", "segment the prompted seed frames", {"params": "seed_masks"}
    ),
    "zero_shot_seeds": StageSpec(
        "tasks.zero_shot_seeds:zero_shot_seeds",
        "seed labels with no human: grounded_sam (detector + SAM) or maskclip (dense CLIP)",
        {"params": "zero_shot_seeds", "vocabulary": "vocabulary"},
        {"classes": "classes"},
    ),
    "review_select": StageSpec(
        "tasks.review_select:review_select",
        "choose a labeled drop's frames for human review -> review_selection.json",
        {"params": "review", "embed": "select_seeds"},
        {"seeds": "seed_set", "cache": "embedding_cache"},
    ),
    "review_push": StageSpec(
        "tasks.review_sync:review_push",
        "push the chosen frames to Label Studio ($LABEL_STUDIO_URL) as tasks",
        {"params": "review"},
        {"root": "data.root", "classes": "classes"},
    ),
    "review_pull": StageSpec(
        "tasks.review_sync:review_pull",
        "finished Label Studio annotations -> seeds of ROOT/seeds",
        {"params": "review"},
        {"root": "data.root", "classes": "classes"},
    ),
    "evaluate": StageSpec(
        "tasks.evaluate:evaluate",
        "score labels against ground truth (mIoU)",
        defaults={"classes": "classes", "exclude": "train.seeds"},
    ),
}
STAGES = MappingProxyType(_STAGES)  # read-only view; add a stage by adding a row above


def _seed_source(key: str) -> Callable[[Params], str]:
    def get(params: Params) -> str:
        from tasks.models import seed_sources

        return seed_sources(params)[key]

    return get


_DERIVED: dict[str, Callable[[Params], Any]] = {
    "seed_images": _seed_source("images"),
    "seed_labels": _seed_source("labels"),
    "classes": _seed_source("classes"),
    "seed_set": lambda params: join(params.data.root, "seeds"),  # tasks.seed_set.seed_set_url
    # the flow's cache too (flows.review_loop.embedding_cache): one embedding per frame sha256
    "embedding_cache": lambda params: (
        params.select_seeds.cache or join(params.data.root, "embeddings")
    ),
}


def _param_value(params: Params, key: str) -> Any:
    if key in _DERIVED:
        return _DERIVED[key](params)
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return node


def resolve_stage(name: str) -> tuple[StageSpec, Callable[..., Any]]:
    """(spec, function) of stage `name`; LamflowError lists the known stages."""
    if name not in STAGES:
        raise LamflowError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGES))}")
    spec = STAGES[name]
    module, _, attr = spec.target.partition(":")
    return spec, getattr(importlib.import_module(module), attr)


def _is_list(tp: Any) -> bool:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (list, Iterable) or origin is getattr(typing, "Iterable", None):
        return True
    return any(_is_list(a) for a in args if a is not type(None))


def _add_stage_options(parser: argparse.ArgumentParser, spec: StageSpec, fn: Callable) -> None:
    hints = typing.get_type_hints(fn)
    for pname, param in inspect.signature(fn).parameters.items():
        if pname in spec.sections or pname == "progress":
            continue
        tp = hints.get(pname, str)
        opt = f"--{pname.replace('_', '-')}"
        required = param.default is inspect.Parameter.empty and pname not in spec.defaults
        fallback = f" (default: params {spec.defaults[pname]})" if pname in spec.defaults else ""
        if tp is bool:
            parser.add_argument(
                opt, dest=pname, action=argparse.BooleanOptionalAction, default=None
            )
        elif _is_list(tp):
            parser.add_argument(
                opt, dest=pname, nargs="*", default=None, required=required, help=fallback.strip()
            )
        else:
            kind = int if tp is int else float if tp is float else str
            parser.add_argument(
                opt, dest=pname, type=kind, default=None, required=required, help=fallback.strip()
            )


def run_stage(name: str, options: dict[str, Any], params: Params) -> Any:
    """Call stage `name` with CLI `options` (None = not given), params sections and defaults."""
    spec, fn = resolve_stage(name)
    kwargs: dict[str, Any] = {}
    for pname in inspect.signature(fn).parameters:
        if pname in spec.sections:
            kwargs[pname] = getattr(params, spec.sections[pname])
        elif options.get(pname) is not None:
            kwargs[pname] = options[pname]
        elif pname in spec.defaults:
            kwargs[pname] = _param_value(params, spec.defaults[pname])
    return fn(**kwargs)


def _jsonable(result: Any) -> Any:
    if hasattr(result, "as_dict"):
        return result.as_dict()
    if is_dataclass(result) and not isinstance(result, type):
        return asdict(result)
    return result


def _short(value: Any) -> Any:
    """Long lists become '[N items]' on the terminal; --json-out keeps everything."""
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 10:
        return f"[{len(value)} items]"
    return value


def register(sub: argparse._SubParsersAction) -> None:
    stage = sub.add_parser(
        "stage",
        help="run one pipeline stage (what dvc.yaml calls)",
        add_help=False,
        description="lamflow stage NAME --help lists a stage's options.",
    )
    stage.add_argument("stage", metavar="NAME", choices=sorted(STAGES), help=", ".join(STAGES))
    stage.add_argument("stage_args", nargs=argparse.REMAINDER)
    stage.set_defaults(func=_stage)

    p = sub.add_parser("nightly", help="label every new drop under data.root (Prefect flow)")
    _common(p)
    p.add_argument("--drive", nargs="*", default=None, help="only these drops")
    p.add_argument("--dask-address", default=None, help="existing Dask scheduler (tcp://...)")
    p.set_defaults(func=_nightly)

    p = sub.add_parser("bootstrap", help="add a first drop, train from seeds, label it")
    _common(p)
    p.add_argument("--source", required=True, help="folder (URL) of the first drop's frames")
    p.add_argument("--drive", required=True, help="drive id of that drop")
    p.add_argument("--dask-address", default=None)
    p.set_defaults(func=_bootstrap)

    p = sub.add_parser("serve", help="serve the nightly deployment on its cron (one process)")
    _common(p)
    p.add_argument("--cron", default=None, help="cron schedule (default: pipeline.schedule)")
    p.set_defaults(func=_serve)

    drop = sub.add_parser("drop", help="manage drops under data.root")
    dsub = drop.add_subparsers(dest="drop_cmd", required=True, metavar="ACTION")
    p = dsub.add_parser("add", help="copy a folder of frames in as a new drop")
    _common(p)
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
    _common(p)
    p.add_argument("drive")
    p.add_argument("--by", default=os.environ.get("USER", ""), help="who accepts (recorded)")
    p.add_argument("--note", default="", help="why (recorded)")
    p.add_argument("--root", default=None, help="ROOT (default: data.root)")
    p.set_defaults(func=_drop_accept)

    p = sub.add_parser("s3", help="the project's SeaweedFS S3 server on 127.0.0.1")
    p.add_argument("action", choices=("up", "down", "env"))
    p.add_argument("--port", type=int, default=8333)
    p.add_argument("--dir", type=Path, default=Path(".s3data"))
    p.set_defaults(func=_s3)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")


def stage_parser(name: str) -> argparse.ArgumentParser:
    """Parser of `lamflow stage NAME` built from the stage function's signature.

    Built only when that stage runs, so `lamflow --help` does not import every stage's deps.
    """
    spec, fn = resolve_stage(name)
    parser = argparse.ArgumentParser(prog=f"lamflow stage {name}", description=spec.help)
    _add_stage_options(parser, spec, fn)
    _common(parser)
    parser.add_argument("--json-out", default=None, help="also write the result as JSON here")
    return parser


def _stage(args: argparse.Namespace) -> int:
    opts = stage_parser(args.stage).parse_args(args.stage_args)
    params = load_params(opts.params, opts.set)  # every key checked before any work
    result = _jsonable(run_stage(args.stage, vars(opts), params))
    if opts.json_out:
        write_text_atomic(opts.json_out, json.dumps(result, indent=1, default=str))
    print(json.dumps(_short(result), indent=1, default=str))
    quarantined = result.get("quarantined") if isinstance(result, dict) else None
    if quarantined:
        n = quarantined if isinstance(quarantined, int) else len(quarantined)
        print(f"lamflow: warning: {n} frame(s) quarantined", file=sys.stderr)
    if isinstance(result, dict) and result.get("status") == "fail":
        # A failed QC stops `dvc repro` here: later stages must not publish these labels.
        failed = [c["column"] for c in result.get("checks", []) if not c.get("success")]
        print(
            f"lamflow: error: qc failed ({', '.join(failed) or 'see checks'}); "
            f"the reasons are in qc.json",
            file=sys.stderr,
        )
        return 1
    if isinstance(result, dict) and result.get("status") == "warn":
        print("lamflow: warning: qc warn", file=sys.stderr)
    return 0


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


def _s3(args: argparse.Namespace) -> int:
    from lamflow import s3server

    if args.action == "up":
        print(f"SeaweedFS S3 on {s3server.up(args.dir, args.port)}; credentials: lamflow s3 env")
    elif args.action == "down":
        print("stopped" if s3server.down(args.dir) else "no server was running")
    else:
        print("\n".join(s3server.env_lines(args.dir)))
    return 0
