"""What the project's local servers (SeaweedFS, Label Studio) share: loopback ports, stopping
a server's process group, and the `up`/`down` state file of a background server.

Each server runs in its own session (`start_new_session=True`), so signalling its process
group reaches the children it spawns (Label Studio's workers, SeaweedFS's components) too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def port_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Graceful stop of a server we started (SIGTERM to its group), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Abrupt death (SIGKILL to its group), as in a crash: for reliability tests."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)


def running_state(state: Path) -> dict[str, Any] | None:
    """The state file of a background server whose process is alive, else None (a stale file,
    left by a server that died, is removed)."""
    if not state.exists():
        return None
    info = dict(json.loads(state.read_text()))
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        state.unlink()
        return None
    return info


def write_state(state: Path, pid: int, **info: Any) -> None:
    state.write_text(json.dumps({"pid": pid, **info}))


def _gone(pid: int) -> bool:
    """True once pid has exited; reaps it if it is our child (`up` in this process, as in
    tests: an unreaped child stays a zombie and looks alive)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # not our child: init reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_background(state: Path, wait_seconds: float = 20.0) -> bool:
    """Stop the server a state file names (SIGTERM, then SIGKILL); False if none was running."""
    if not state.exists():
        return False
    pid = int(json.loads(state.read_text())["pid"])
    state.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.25)
    os.killpg(pid, signal.SIGKILL)
    return True
