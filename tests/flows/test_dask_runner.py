"""The LocalCluster the flows start: size, worker kind and the environment workers get."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import dask
import pytest

from flows.nightly import auto_workers, dask_runner, worker_environment
from flows.runtime import import_in_background
from lam.cpu_memory import malloc_environment, wanted


def test_auto_workers_is_one_per_four_cores_and_at_least_one() -> None:
    assert [auto_workers(c) for c in (1, 2, 4, 7, 16)] == [1, 1, 1, 1, 4]


# wanted() also reads LAMFLOW_KEEP_FREED_MEMORY: a run with it off skips these too.
glibc_only = pytest.mark.skipif(not wanted(), reason="lam.cpu_memory applies on glibc only")


@glibc_only
def test_worker_environment_keeps_freed_memory_and_shares_threads(monkeypatch) -> None:
    monkeypatch.delenv("LAMFLOW_KEEP_FREED_MEMORY", raising=False)
    env = worker_environment(3)
    # lam.cpu_memory's settings replace dask's MALLOC_TRIM_THRESHOLD_=65536 (on glibc).
    assert env["MALLOC_TRIM_THRESHOLD_"] == "2147483647" and env["MALLOC_ARENA_MAX"] == "1"
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert env["OMP_NUM_THREADS"] == env["LAMFLOW_TORCH_THREADS"] == "3"
    assert worker_environment(0)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("LAMFLOW_KEEP_FREED_MEMORY", "0")
    env = worker_environment(3)
    assert env["MALLOC_TRIM_THRESHOLD_"] is None  # None = dask unsets its own
    assert "MALLOC_ARENA_MAX" not in env and "MALLOC_MMAP_MAX_" not in env


def test_one_worker_runs_in_process_several_in_processes() -> None:
    one = dask_runner("", workers=1)
    assert one.cluster_kwargs["processes"] is False and one.cluster_kwargs["n_workers"] == 1
    several = dask_runner("", workers=2)
    assert several.cluster_kwargs["processes"] is True
    spawn_env = dask.config.get("distributed.nanny.pre-spawn-environ")
    assert spawn_env["OMP_NUM_THREADS"] == spawn_env["LAMFLOW_TORCH_THREADS"]
    for name, value in malloc_environment().items():  # {} off glibc
        assert spawn_env[name] == value
    assert dask.config.get("distributed.worker.profile.enabled") is False
    forced = dask_runner("", workers=1, processes=True)
    assert forced.cluster_kwargs["processes"] is True


def test_existing_scheduler_is_used_as_given() -> None:
    runner = dask_runner("tcp://127.0.0.1:8786")
    assert runner.address == "tcp://127.0.0.1:8786"


def test_a_module_imported_in_the_background_is_the_one_a_step_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module's code signals that it runs, then waits for the test's go: the step's import
    # below starts while the background import is provably under way, and must wait for it.
    gate = types.SimpleNamespace(started=threading.Event(), go=threading.Event(), runs=[])
    monkeypatch.setitem(sys.modules, "lamflow_test_gate", gate)
    body = "import lamflow_test_gate as g\ng.runs.append(1)\ng.started.set()\ng.go.wait(10)\n"
    (tmp_path / "lamflow_slow_mod.py").write_text(body + "LOADED = True\n")
    (tmp_path / "lamflow_broken_mod.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lamflow_slow_mod", "lamflow_broken_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # and removed again afterwards
    try:
        thread = import_in_background("lamflow_slow_mod")
        assert gate.started.wait(10)
        threading.Timer(0.2, gate.go.set).start()
        import lamflow_slow_mod  # blocks on the import under way, then gets its module

        assert lamflow_slow_mod.LOADED and gate.runs == [1]  # its code ran once
        thread.join(timeout=10)
        assert not thread.is_alive()
        # a module that fails to import fails the step that needs it, not the background thread
        import_in_background("lamflow_broken_mod").join(timeout=10)
        with pytest.raises(RuntimeError, match="broken on import"):
            import lamflow_broken_mod  # noqa: F401
    finally:
        gate.go.set()
        for name in ("lamflow_slow_mod", "lamflow_broken_mod"):
            sys.modules.pop(name, None)


@glibc_only
def test_kubernetes_workers_get_the_same_malloc_settings(monkeypatch) -> None:
    # The manifest sets them as plain variables: the nanny passes a variable of its own
    # environment on in place of its default, and lower-cases a DASK_..._PRE_SPAWN_ENVIRON__X.
    import yaml
    from distributed.nanny import _get_env_variables

    monkeypatch.delenv("LAMFLOW_KEEP_FREED_MEMORY", raising=False)
    manifest = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "dask-cluster.yaml"
    (cluster,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "DaskCluster"]
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    expected = malloc_environment()
    assert expected and {k: env.get(k) for k in expected} == expected
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spawned = _get_env_variables("distributed.nanny.pre-spawn-environ")
    assert spawned["MALLOC_TRIM_THRESHOLD_"] == expected["MALLOC_TRIM_THRESHOLD_"]
