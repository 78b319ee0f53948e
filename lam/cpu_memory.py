"""Keep the memory that CPU inference frees inside the process, for the next batch to reuse.

Why: glibc's malloc serves every block above its mmap threshold (128 KiB at first, 32 MiB at
most) with a fresh `mmap` and hands it back to the kernel on `free`; a thread other than the
main one allocates from an arena of 64 MiB heaps that are unmapped once empty. A batch of four
360x480 frames through the backbone allocates and frees dozens of large tensors (the widest,
96 channels at 180x240, is 66 MB), so the kernel mapped, zeroed and faulted in ~32 MB of pages
again for every frame: ~8,100 minor page faults and ~17 ms of kernel time a frame on 2 cores
on the main thread, ~10,000 on a Dask worker's thread; a third of the backbone's time.

The settings: one arena for all threads (the main one, which grows with brk), large blocks
from that heap instead of their own mappings, and a heap that is never trimmed. Measured on
2 cores, 360x480: the bare backbone ~34 -> ~23 ms a frame and `annotate` ~45 -> ~30 ms, no
page faults left, on the main thread and on a worker thread alike.

The cost: a process keeps its peak heap (1.08 GB for `lamflow annotate` at batch 4, the same
peak as without the settings) instead of returning it between batches, up to 2 GiB of free
memory at the heap's top, which is trimmed beyond that. A long-lived process (a Dask worker,
`lamflow serve`) keeps the peak of its largest job, which Dask counts as unmanaged memory
against a worker's memory limit; frames of changing sizes can fragment the heap beyond one
peak. `LAMFLOW_KEEP_FREED_MEMORY=0` leaves malloc as it is in processes lamflow starts (the
Kubernetes manifest sets the variables itself: remove them there). Nothing happens off glibc
(musl, macOS, Windows); under a preloaded allocator (jemalloc, tcmalloc) the settings reach
glibc's unused malloc and change nothing, though `keep_freed_memory` still reports True.

The arena setting only reaches threads that have not allocated yet, so the `lamflow` command
applies all of this first thing (`cli.main.entry`), Dask worker processes get the same
settings as environment variables at spawn (`malloc_environment`), and the CPU `Annotator`
applies them for callers that use the library directly (their main thread benefits fully).
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# The largest value mallopt's int takes: the heap is trimmed only beyond 2 GiB free at its top.
NEVER_TRIM = 2**31 - 1
ENV_SWITCH = "LAMFLOW_KEEP_FREED_MEMORY"

_lock = threading.Lock()
_state: dict[str, bool] = {}


def wanted() -> bool:
    """False when LAMFLOW_KEEP_FREED_MEMORY is 0/false/no/off, or when not Linux with glibc."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Apply the settings above to this process (once; later calls only report).

    Returns True when they are in force, False when they do not apply (`wanted()` is False)
    or glibc refused one.
    """
    with _lock:
        if "applied" not in _state:
            _state["applied"] = wanted() and _apply()
        return _state["applied"]


def malloc_environment() -> dict[str, str]:
    """The same settings as glibc's environment variables, for a process about to be spawned
    (read by its malloc at start-up, before any thread exists); {} when not `wanted()`."""
    if not wanted():
        return {}
    return {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": str(NEVER_TRIM),
    }


def _apply() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success.
    return (
        bool(mallopt(M_ARENA_MAX, 1))
        and bool(mallopt(M_MMAP_MAX, 0))
        and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    )
