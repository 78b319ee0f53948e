"""`lamflow` command line: the top layer (cli > flows > tasks > lamflow > lam). Each command
module registers its sub-commands; errors become one line and a non-zero exit code.

Command modules (each has `register(subparsers)`) are listed in `_COMMAND_MODULES`: every stage
as `lamflow stage NAME` and `lamflow NAME` (cli/stages.py, from one table), the flows
(cli/runs.py), tools (cli/tools.py) and the demo. A command calls the plain stage function from
`tasks/` or a flow from `flows/`, never a copy of its body.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from lam.cpu_memory import keep_freed_memory
from lam.errors import LamflowError

_COMMAND_MODULES = ("cli.stages", "cli.runs", "cli.tools", "cli.demo", "cli.ml_backend")


def _quiet_environment() -> None:
    """No telemetry and no hub access from anything we import (the product runs offline)."""
    for key, value in {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }.items():
        os.environ.setdefault(key, value)


def _one_line(exc: BaseException) -> str:
    """`exc` as one line (an error message may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamflow", description="Auto-label driving data with a few-shot LAM annotator."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_environment()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not hasattr(args, "stage_args"):  # only the stage commands pass options on
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.stage_args = [*unknown, *args.stage_args]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "botocore", "urllib3", "distributed", "prefect", "fsspec", "s3fs"):
        if not args.verbose:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = args.func(args)
    except (LamflowError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if args.verbose:
            raise
        print(f"lamflow: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        # An optional package a backend needs is missing: the registries' MissingDependencyError
        # carries the install hint; any other import error is printed in Python's words.
        if args.verbose:
            raise
        print(f"lamflow: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lamflow: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def exit_without_teardown(code: int) -> NoReturn:
    """End the process the way Python's own exit starts, then skip the rest of it.

    Python's exit first joins the non-daemon threads and runs threading's exit hooks (where
    Prefect's log and event queues drain to the API), then the `atexit` handlers (logging's
    flush, Prefect's ephemeral server stop, Dask's finalizers). Everything after that is
    freeing every object and module: ~0.5 s for a process that imported torch, 1.5-2 s for one
    that also imported Prefect, Dask and Great Expectations (measured here, 2 cores), with
    nothing left to write. So those two steps run here, stdout and stderr are flushed, and
    `os._exit` ends the process. Files the commands write are closed by then (`with` blocks,
    atomic writes), so no buffered bytes are lost.
    """
    shutdown_threads = getattr(threading, "_shutdown", None)
    if shutdown_threads is None:  # pragma: no cover - a Python without the hook: exit normally
        sys.exit(code)
    # As in Python's exit, a failing threading hook (or Ctrl-C while threads are joined) is
    # reported and the rest still runs; `_run_exitfuncs` reports a failing handler itself.
    try:
        shutdown_threads()
    except BaseException:
        traceback.print_exc()
    atexit._run_exitfuncs()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:  # closed by the caller (`>&-`): nothing was written to it
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            # Output that never arrived (a full disk, a closed pipe) must not exit 0: Python's
            # own exit gives 120 here too.
            err = sys.__stderr__
            if err is not None:
                try:
                    err.write(f"lamflow: error: could not write {name}: {exc}\n")
                    err.flush()
                except (OSError, ValueError):
                    pass
            code = code or 120
    os._exit(code)


def entry() -> NoReturn:
    """The `lamflow` console script: `main()`, then `exit_without_teardown`.

    An exception `main` does not turn into an exit code (a traceback under --verbose, argparse's
    SystemExit for --help or a usage error) leaves through Python's normal exit instead.
    Before anything else, malloc is set to keep freed memory (`lam.cpu_memory`): its arena
    setting only reaches threads that have not allocated yet, e.g. a Dask worker's.
    """
    keep_freed_memory()
    exit_without_teardown(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
