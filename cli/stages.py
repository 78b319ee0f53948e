"""`lamflow stage NAME` and its short alias `lamflow NAME` (dashes for underscores): one entry
per stage, both generated from the `STAGES` table below.

A row names the plain stage function; its command-line options are made from the function's
signature (`images: str` -> `--images URL`, `seeds: list[str]` -> `--seeds STEM...`,
`progress` -> `--no-progress`), its params section(s) come from params.yaml (+ `--set`
overrides), and an omitted option falls back to the params key named in `defaults`. Adding a
stage is one row; nothing about a stage's command line is written by hand. A stage's module is
imported only when that stage runs (or shows its --help), so `lamflow --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from types import MappingProxyType
from typing import Any

from lam.errors import LamflowError
from lamflow.params import Params, load_params
from lamflow.storage import join, write_text_atomic


@dataclass(frozen=True)
class StageSpec:
    """How `lamflow stage NAME` (and `lamflow NAME`) calls a stage.

    target: "module:function" of the plain stage function.
    sections: function argument -> params.yaml section passed to it (validated model).
    defaults: function argument -> params key (dotted, or a name in `_DERIVED`) used when the
        option is not given on the command line.
    options: function argument -> option name, where the argument's own name reads badly on a
        command line (`fmt` -> `--format`).
    unless: function argument -> other arguments; when one of them is given, the first one's
        params default is off (`train --seed-set DIR` trains on that set, and
        `train --no-seeds` on nothing, not also on the seeds of params.yaml).
    option_help: function argument -> its help line on the command line.
    """

    target: str
    help: str
    sections: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    unless: dict[str, tuple[str, ...]] = field(default_factory=dict)
    option_help: dict[str, str] = field(default_factory=dict)
    internal: tuple[str, ...] = ()  # arguments for callers in code, not the command line


_SEEDS = {"images": "seed_images", "labels": "seed_labels", "classes": "classes"}
_STAGES: dict[str, StageSpec] = {
    # the pipeline, in order (dvc.yaml)
    "ingest": StageSpec(
        "tasks.ingest:ingest",
        "register a drop: frames, sha256, size, decode check -> ingest.json",
        {"params": "ingest"},
        {"root": "data.root"},
    ),
    "vocabulary": StageSpec(
        "tasks.vocabulary:vocabulary",
        "discover a drop's label vocabulary -> vocabulary.yaml",
        {"params": "vocabulary"},
    ),
    "select_seeds": StageSpec(
        "tasks.select_seeds:select_seeds",
        "choose the frames of a drop worth annotating -> seeds.yaml",
        {"params": "select_seeds"},
    ),
    "seed_masks": StageSpec(
        "tasks.seed_masks:seed_masks",
        "turn prompt files (clicks, boxes, ...) into seed label PNGs",
        {"params": "seed_masks"},
    ),
    "zero_shot_seeds": StageSpec(
        "tasks.zero_shot_seeds:zero_shot_seeds",
        "seed labels with no human: grounded_sam, maskclip or source_model (zero-seed network)",
        {"params": "zero_shot_seeds", "vocabulary": "vocabulary", "model": "model"},
        {"classes": "classes"},
    ),
    "import_seeds": StageSpec(
        "tasks.seed_bootstrap:import_seeds",
        "copy seed frames + labels into a seed set, byte for byte",
        defaults={"stems": "train.seeds", **_SEEDS},
    ),
    "restore_seeds": StageSpec(
        "tasks.restore_seeds:restore_seeds",
        "data/seeds as data/seeds.dvc records it: DVC cache, remote, or a verified import",
        defaults={"stems": "train.seeds", **_SEEDS},
    ),
    "seed_set": StageSpec(
        "tasks.seed_set:seed_set",
        "merge imported and prompted seeds into the seed set train reads",
        defaults={"classes": "classes"},
    ),
    "train": StageSpec(
        "tasks.train:train",
        "train the annotator from seed frames (or a seed set)",
        {"model": "model", "settings": "train"},
        {**_SEEDS, "seeds": "train.seeds"},
        unless={"seeds": ("seed_set", "no_seeds")},
        option_help={
            "no_seeds": "build the mapped source-network model from no labelled frame "
            "(not even params' train.seeds)",
            "vocabulary": "a vocabulary.yaml whose source_mapping rows map the source "
            "network's classes (corrections there win; default: proposed from the names)",
            "seed_set": "train on every seed of this seed set, not on params' train.seeds",
            "unlabeled": "folders of the drops to label (labels never read); see "
            "train.unlabeled_method",
        },
    ),
    "adapt": StageSpec(
        "tasks.adapt:adapt",
        "optional: self-train a trained model on a drop's frames (new model directory)",
        {"settings": "adapt"},
        {"seed_images": "seed_images", "seed_labels": "seed_labels"},
    ),
    "annotate": StageSpec(
        "tasks.annotate:annotate",
        "label a drop (or some stems of it)",
        {"params": "annotate"},
        internal=("shard",),  # the flow's sharded run (tasks/shards.py)
    ),
    "qc": StageSpec(
        "tasks.qc:qc",
        "check a labeled drop's written outputs, read back",
        {"params": "qc"},
    ),
    "export": StageSpec(
        "tasks.export:export", "publish labels in the chosen format", {"params": "export"}
    ),
    "evaluate": StageSpec(
        "tasks.evaluate:evaluate",
        "score labels against ground truth (mIoU; the seeds are not scored)",
        defaults={"classes": "classes", "exclude": "train.seeds"},
    ),
    "version": StageSpec(
        "tasks.version:version",
        "version a run's seed set, model, vocabularies and labels with DVC (git tag run-RUN)",
        {"params": "versioning"},
        {"root": "data.root"},
    ),
    # the review loop (docs/review.md)
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
    # review files and formats, for tools other than a Label Studio server
    "review_export": StageSpec(
        "tasks.review:review_export",
        "write a CVAT / Cityscapes / Label Studio task for frames to review",
        options={"fmt": "format"},
    ),
    "review_import": StageSpec(
        "tasks.review:review_import",
        "read corrected annotations back as label PNGs",
        options={"fmt": "format"},
    ),
    "export_coco": StageSpec(
        "tasks.review:export_coco", "a labeled drop as COCO JSON with RLE masks"
    ),
}
STAGES = MappingProxyType(_STAGES)  # read-only view; add a stage by adding a row above


def alias(name: str) -> str:
    """The short command of stage `name`: `select_seeds` -> `lamflow select-seeds`."""
    return name.replace("_", "-")


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
        if pname in spec.sections or pname in spec.internal:
            continue
        if pname == "progress":
            parser.add_argument(
                "--no-progress",
                dest="progress",
                action="store_false",
                default=None,
                help="no progress bars (logs, CI)",
            )
            continue
        tp = hints.get(pname, str)
        opt = f"--{spec.options.get(pname, pname).replace('_', '-')}"
        required = param.default is inspect.Parameter.empty and pname not in spec.defaults
        fallback = f" (default: params {spec.defaults[pname]})" if pname in spec.defaults else ""
        fallback = f"{spec.option_help.get(pname, '')}{fallback}"
        if tp is bool and opt.startswith("--no-"):  # `no_seeds` -> --no-seeds, a plain flag
            # (BooleanOptionalAction would read any --no-... option as False)
            parser.add_argument(
                opt, dest=pname, action="store_true", default=None, help=fallback.strip()
            )
        elif tp is bool:
            parser.add_argument(
                opt,
                dest=pname,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=fallback.strip(),
            )
        elif typing.get_origin(tp) is dict or tp is dict:
            parser.add_argument(
                opt,
                dest=pname,
                type=_json_object,
                default=None,
                required=required,
                help=f"a JSON object{fallback}".strip(),
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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


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
            others = spec.unless.get(pname, ())
            if all(options.get(other) in (None, "", [], False) for other in others):
                kwargs[pname] = _param_value(params, spec.defaults[pname])
            else:  # the other option replaces this default (a list argument becomes empty)
                kwargs[pname] = []
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


def common_options(p: argparse.ArgumentParser) -> None:
    """--params and --set, which every command that reads params.yaml takes."""
    p.add_argument("--params", default="params.yaml", help="params file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")


def register(sub: argparse._SubParsersAction) -> None:
    """`lamflow stage NAME ...` and `lamflow NAME ...` for every row of STAGES."""
    stage = sub.add_parser(
        "stage",
        help="run one pipeline stage (what dvc.yaml calls); also `lamflow NAME`",
        add_help=False,
        description="lamflow stage NAME --help lists a stage's options.",
    )
    stage.add_argument("stage", metavar="NAME", nargs="?", help=", ".join(STAGES))
    stage.add_argument("stage_args", nargs=argparse.REMAINDER)
    stage.set_defaults(func=_stage)
    for name, spec in STAGES.items():
        # every option, --help included, goes to the stage's own parser (cli.main passes the
        # arguments this parser does not know on as stage_args)
        p = sub.add_parser(alias(name), help=spec.help, add_help=False)
        p.set_defaults(func=_stage, stage=name, stage_args=[])


def stage_parser(name: str, prog: str = "") -> argparse.ArgumentParser:
    """Parser of stage `name` built from the stage function's signature.

    Built only when that stage runs, so `lamflow --help` does not import every stage's deps.
    """
    spec, fn = resolve_stage(name)
    parser = argparse.ArgumentParser(prog=prog or f"lamflow stage {name}", description=spec.help)
    _add_stage_options(parser, spec, fn)
    common_options(parser)
    parser.add_argument("--json-out", default=None, help="also write the result as JSON here")
    return parser


def _stage(args: argparse.Namespace) -> int:
    if args.stage is None and args.stage_args[:1] in (["-h"], ["--help"]):
        args.stage = "--help"
    if args.stage in (None, "-h", "--help"):
        width = max(len(n) for n in STAGES)
        print("lamflow stage NAME [options] (or lamflow NAME); NAME --help lists its options\n")
        print("\n".join(f"  {n:<{width}}  {spec.help}" for n, spec in STAGES.items()))
        return 0 if args.stage else 2
    opts = stage_parser(args.stage).parse_args(args.stage_args)
    params = load_params(opts.params, opts.set)  # every key checked before any work
    result = _jsonable(run_stage(args.stage, vars(opts), params))
    if opts.json_out:
        write_text_atomic(opts.json_out, json.dumps(result, indent=1, default=str))
    print(json.dumps(_short(result), default=str))  # one line: `| jq` or json.loads
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
