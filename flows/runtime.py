"""Where the flows run: the Dask task runner and one Prefect API shared with its workers."""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import TaskRunner

from lam.cpu_memory import malloc_environment
from lam.predictor import usable_cores


def auto_workers(cores: int | None = None) -> int:
    """Default LocalCluster size: one worker per 4 cores, at least one.

    One torch process with several threads beats several one-thread processes on small
    machines (measured on the 2-core CI machine: one process 11-12 frames/s, two concurrent
    one-thread processes 2.5 frames/s each), and torch's convolutions scale well to ~4 threads.
    """
    return max(1, (cores or usable_cores()) // 4)


def import_in_background(module: str) -> threading.Thread:
    """Start importing `module` on a daemon thread and return it.

    For a heavy library a later step needs (Great Expectations for QC): the import runs while
    the flow's main thread waits on its Dask shards, not before the first one. Start it where
    the calling thread imports nothing new meanwhile: two threads importing modules that import
    each other in opposite orders make Python raise a deadlock error in one of them. A step
    that imports the module meanwhile waits for this import (Python's per-module import lock)
    and gets the same module; an import error is raised there again, where it means something.
    Already imported: the thread finds it in sys.modules and ends at once.
    """

    def _import() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the step that needs the module raises it
            pass

    thread = threading.Thread(target=_import, name=f"import-{module}", daemon=True)
    thread.start()
    return thread


def worker_environment(threads: int) -> dict[str, str | None]:
    """Environment a Dask Nanny sets before it spawns a worker (`pre-spawn-environ`).

    Dask's default sets MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's dynamic mmap
    threshold: every tensor above 128 KiB is then a fresh mmap, zero-filled page by page, and
    torch inference ran 25-40% slower in such a process (measured here). Instead the worker
    gets `lam.cpu_memory`'s settings (freed memory kept for reuse; with
    LAMFLOW_KEEP_FREED_MEMORY=0, `None` unsets Dask's and malloc keeps its defaults).
    The thread variables give each worker its share of the cores instead of dask's 1.
    """
    share = str(max(1, threads))
    malloc: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None}
    malloc.update(malloc_environment())
    return {
        **malloc,
        "OMP_NUM_THREADS": share,
        "MKL_NUM_THREADS": share,
        "OPENBLAS_NUM_THREADS": share,
        "LAMFLOW_TORCH_THREADS": share,
    }


def dask_runner(
    address: str = "", workers: int = 0, processes: bool | None = None
) -> TaskRunner[Any]:
    """prefect-dask runner: an existing scheduler at `address`, else a LocalCluster.

    LocalCluster workers run one task at a time each (one model per worker keeps memory
    predictable); `workers=0` picks `auto_workers()`. `processes=None` means worker processes
    when there is more than one worker (torch in each gets cores / workers threads), and a
    single worker thread inside the flow's process otherwise: a lone worker process buys no
    parallelism but costs ~15 s per run to spawn and import torch (measured here).
    Workers of an existing scheduler are started by whoever runs them (infra/k8s), with the
    same environment (see `worker_environment`).
    """
    import dask
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    workers = workers or auto_workers()
    if processes is None:
        processes = workers > 1
    # Dask's statistical profiler samples every thread's stack each 10 ms, holding the GIL;
    # nobody reads those profiles here (no dashboard), so it is switched off.
    dask.config.set({"distributed.worker.profile.enabled": False})
    if processes:
        dask.config.set(
            {"distributed.nanny.pre-spawn-environ": worker_environment(usable_cores() // workers)}
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": processes,
            "dashboard_address": None,
        },
    )


@contextmanager
def shared_prefect_api() -> Iterator[str]:
    """One Prefect API for the flow and its Dask worker processes.

    Workers are separate processes: without PREFECT_API_URL in their environment each would
    start its own temporary server and its task runs would not show in the UI. This uses the
    configured API if there is one, else starts one temporary server and exports its URL.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL", "")
    server = None
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
        server = SubprocessASGIServer()
        server.start(timeout=timeout)
        url = server.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        if server is not None:
            _drain_api_workers()
            server.stop()


def _drain_api_workers(timeout: float = 10.0) -> None:
    """Send the logs and events Prefect still holds in its background workers while the API
    is up: they go out in batches every few seconds, and a batch sent after the temporary server
    stopped printed "Error logging to API / All connection attempts failed" at exit (Prefect's
    own test harness drains the same two workers before it stops its server).

    Call from synchronous code (the CLI): with an event loop running, drain_all would return
    a coroutine instead of waiting.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
