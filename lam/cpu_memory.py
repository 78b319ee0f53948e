"""Keep the memory that CPU inference frees inside the process, for the next batch to reuse.

Why: glibc's malloc serves every block above its mmap threshold (128 KiB at first, 32 MiB at
most) with a fresh `mmap` and hands it back to the kernel on `free`. A batch of four 360x480
frames through the backbone allocates and frees dozens of such tensors (the widest, 96
channels at 180x240, is 66 MB), so the kernel mapped, zeroed and faulted in ~32 MB of pages
again for every frame: ~8,100 minor page faults and ~17 ms of kernel time a frame on 2 cores,
a third of the backbone's time. Serving large blocks from malloc's heap (no per-block mmap)
and never trimming that heap removes the faults: the bare backbone went from ~34 to ~25 ms a
frame, annotate from ~45 to ~32 ms.

The cost: the process keeps its peak heap (the largest batch's working set, a few hundred MB
for annotate) instead of returning it between batches. `LAMFLOW_KEEP_FREED_MEMORY=0` leaves
malloc as it was. Nothing happens off glibc (musl, macOS, Windows) or when called again.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest value mallopt's int takes: the heap is never trimmed.
NEVER_TRIM = 2**31 - 1
ENV_SWITCH = "LAMFLOW_KEEP_FREED_MEMORY"

_lock = threading.Lock()
_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring); process-wide.

    Returns True when the setting is in force (now or from an earlier call), False when it
    does not apply: not glibc, mallopt refused, or LAMFLOW_KEEP_FREED_MEMORY=0.
    """
    with _lock:
        if "applied" not in _state:
            _state["applied"] = _apply()
        return _state["applied"]


def _apply() -> bool:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. Large blocks then come from the heap (the main arena grows
    # with brk; a thread's arena that cannot hold a block falls back to the main arena).
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
