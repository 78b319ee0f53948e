"""Freed CPU memory stays in the process: large blocks are reused, not faulted in again."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lam.cpu_memory import malloc_environment

# Allocates and frees blocks of 8-40 MB, some alive together, ten times (as a batch through a
# backbone does), on the main thread or on a new one, and reports the minor page faults of
# the last nine rounds (the first may map the memory in). Each run is its own process: the
# settings are process-wide and one-way.
_SCRIPT = """
import json, resource, sys, threading
import numpy as np
from lam.cpu_memory import keep_freed_memory
mode, where = sys.argv[1], sys.argv[2]
applied = keep_freed_memory() if mode == "keep" else None
result = {}
def batch():
    a = np.ones(5 << 20, np.float32); b = np.ones(2 << 20, np.float32)
    c = np.ones(10 << 20, np.float32); del a
    d = np.ones(3 << 20, np.float32); del b, c, d
def churn():
    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(9):
        batch()
    result["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
if where == "thread":
    worker = threading.Thread(target=churn); worker.start(); worker.join()
else:
    churn()
print(json.dumps({"applied": applied, "faults": result["faults"], "again": keep_freed_memory()}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc malloc's",
)
ROOT = Path(__file__).resolve().parents[2]
# malloc's default maps the large blocks afresh: 1,219-5,818 faults here (some of the memory in
# transparent huge pages; 4 KiB pages alone would fault ~200,000 times); kept, 0.
FAULTS_WITHOUT = 500
FAULTS_WITH = 100


def _run(mode: str, where: str = "main", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, where],
        env={**clean, "LAMFLOW_KEEP_FREED_MEMORY": "1", **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout)


@glibc_only
@pytest.mark.parametrize("where", ["main", "thread"])
def test_large_blocks_are_reused_without_page_faults(where):
    default = _run("default", where)
    kept = _run("keep", where)
    assert default["applied"] is None and default["faults"] > FAULTS_WITHOUT
    assert kept["applied"] is True and kept["again"] is True
    assert kept["faults"] < FAULTS_WITH and kept["faults"] * 10 < default["faults"]


@glibc_only
def test_the_environment_form_works_in_a_spawned_process_on_any_thread():
    # What a Dask worker process gets at spawn: no call in the process itself.
    env = malloc_environment()
    assert env == {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": "2147483647",
    }
    assert _run("default", "thread", **env)["faults"] < FAULTS_WITH


@glibc_only
def test_the_switch_leaves_malloc_alone(monkeypatch):
    off = _run("keep", "main", LAMFLOW_KEEP_FREED_MEMORY="0")
    assert off["applied"] is False and off["again"] is False
    assert off["faults"] > FAULTS_WITHOUT
    monkeypatch.setenv("LAMFLOW_KEEP_FREED_MEMORY", "off")
    assert malloc_environment() == {}
