"""Freed CPU memory stays in the process: large blocks are reused, not faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MB block ten times and reports the minor page faults of
# the last nine (the first one may map the memory in). Each run is its own process, since the
# setting is process-wide and one-way.
_SCRIPT = """
import json, resource, sys
import numpy as np
from lam.cpu_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
block = np.ones(16 << 20, dtype=np.float32); del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    block = np.ones(16 << 20, dtype=np.float32); del block
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults, "again": keep_freed_memory()}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting is glibc malloc's",
)


def _run(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    return json.loads(out.stdout)


@glibc_only
def test_large_blocks_are_reused_without_page_faults():
    # malloc's default maps each 64 MB block afresh: 9 x 16,384 faults of 4 KiB pages, or
    # ~4,900 where transparent huge pages serve part of it (as here).
    default = _run("default", LAMFLOW_KEEP_FREED_MEMORY="1")
    kept = _run("keep", LAMFLOW_KEEP_FREED_MEMORY="1")
    assert default["applied"] is None and default["faults"] > 2_000
    assert kept["applied"] is True and kept["again"] is True
    assert kept["faults"] < 100


@glibc_only
def test_the_environment_switch_leaves_malloc_alone():
    off = _run("keep", LAMFLOW_KEEP_FREED_MEMORY="0")
    assert off["applied"] is False and off["again"] is False
    assert off["faults"] > 2_000
