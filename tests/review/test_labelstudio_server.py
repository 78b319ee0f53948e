"""lamflow.labelstudio: credentials, finding the executable, `up`/`env`/`down`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lam.errors import LamflowError
from lamflow import labelstudio as lsmod
from lamflow.labelstudio import LabelStudioServer, credentials, env_lines
from lamflow.labelstudio_api import LabelStudioClient


def test_credentials_are_generated_once_with_mode_600(tmp_path: Path) -> None:
    creds = credentials(tmp_path / "ls")
    stored = tmp_path / "ls" / "credentials.env"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert credentials(tmp_path / "ls") == creds  # kept, not regenerated
    assert len(creds.token) > 5  # Label Studio ignores shorter user tokens
    assert creds.token not in repr(creds) and creds.password not in repr(creds)
    assert f"LABEL_STUDIO_API_KEY={creds.token}" in stored.read_text()


def test_missing_executable_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAMFLOW_LABEL_STUDIO", raising=False)
    monkeypatch.setattr(lsmod, "REPO", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LamflowError, match="make labelstudio-venv"):
        lsmod.label_studio_binary()
    monkeypatch.setenv("LAMFLOW_LABEL_STUDIO", str(tmp_path / "nope"))
    with pytest.raises(LamflowError, match="LAMFLOW_LABEL_STUDIO=.*nope is not an executable"):
        lsmod.label_studio_binary()
    exe = tmp_path / "label-studio"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("LAMFLOW_LABEL_STUDIO", str(exe))
    assert lsmod.label_studio_binary() == str(exe)


def test_busy_port_is_refused_before_starting(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = LabelStudioServer(tmp_path, sock.getsockname()[1], credentials(tmp_path))
        with pytest.raises(LamflowError, match="is in use: pass another --port"):
            server.start()  # Label Studio itself would silently move to the next port


def test_env_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(LamflowError, match="make labelstudio-up"):
        env_lines(tmp_path)
    assert lsmod.main(["env", "--dir", str(tmp_path)]) == 2


@pytest.mark.integration
def test_env_lines_point_a_client_at_the_running_server(
    labelstudio: LabelStudioServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # what `up` leaves behind, for the session's server (starting a second one costs ~30 s)
    assert labelstudio.proc is not None
    state = labelstudio.data_dir / "server.json"
    state.write_text(json.dumps({"pid": labelstudio.proc.pid, "url": labelstudio.url}))
    try:
        lines = env_lines(labelstudio.data_dir)
        assert lines == [
            f"export LABEL_STUDIO_URL={labelstudio.url}",
            f"export LABEL_STUDIO_API_KEY={labelstudio.creds.token}",
        ]
        environ = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        assert LabelStudioClient.from_env(environ).check()["email"] == labelstudio.creds.username
        assert lsmod.up(labelstudio.data_dir) == labelstudio.url  # idempotent: no 2nd one
        assert lsmod.main(["env", "--dir", str(labelstudio.data_dir)]) == 0
        assert capsys.readouterr().out.splitlines() == lines
    finally:
        state.unlink()


@pytest.mark.integration
def test_up_env_down(labelstudio: LabelStudioServer, tmp_path: Path) -> None:
    """The `make labelstudio-up` / `-down` path, on a copy of the session server's folder.

    A copy (SQLite backup API, safe while the server runs) skips the ~30-45 s of migrations
    a fresh folder costs; the session fixture already covers a first start.
    """
    import shutil
    import sqlite3

    (tmp_path / "data").mkdir()
    shutil.copy2(labelstudio.data_dir / "credentials.env", tmp_path / "credentials.env")
    shutil.copy2(labelstudio.data_dir / "data" / ".env", tmp_path / "data" / ".env")  # SECRET_KEY
    src = sqlite3.connect(labelstudio.data_dir / "data" / "label_studio.sqlite3")
    dst = sqlite3.connect(tmp_path / "data" / "label_studio.sqlite3")
    src.backup(dst)
    src.close()
    dst.close()
    port = lsmod.free_port()
    url = lsmod.up(tmp_path, port)
    try:
        assert url == f"http://127.0.0.1:{port}"
        assert lsmod.up(tmp_path, port) == url  # idempotent
        environ = dict(line.removeprefix("export ").split("=", 1) for line in env_lines(tmp_path))
        assert environ["LABEL_STUDIO_URL"] == url
        LabelStudioClient.from_env(environ).check()
        assert (tmp_path / "xdg" / "config" / "label-studio").is_dir()  # not in ~/.config
        assert environ["LABEL_STUDIO_API_KEY"] not in (tmp_path / "label-studio.log").read_text()
    finally:
        assert lsmod.down(tmp_path)
    assert not lsmod.down(tmp_path)
    assert not (tmp_path / "server.json").exists()
