"""A real Label Studio server on loopback for the review loop (`requirements-labelstudio.txt`).

`python -m lamflow.labelstudio up|down|env` (or `make labelstudio-up` / `make labelstudio-down`;
LABEL_STUDIO_PORT=8080) starts and stops one server whose data (SQLite database, uploaded frames)
lives under `.labelstudio/` (git-ignored). Label Studio has its own venv, `.venv-labelstudio/`
(`make labelstudio-venv`), because its pins (Django, pydantic, ...) clash with ours; we only ever
talk to it over HTTP. The first start generates an admin user, password and API token and keeps
them in `.labelstudio/credentials.env` (mode 600); they reach the server through its environment,
never on the command line (visible in `ps`) and never logged. Tests use `LabelStudioServer`
directly with a free port.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lam.errors import LamflowError
from lamflow.daemon import (
    kill_process,
    port_free,
    running_state,
    stop_background,
    stop_process,
    write_state,
)

DEFAULT_DIR = Path(".labelstudio")
DEFAULT_PORT = 8080
REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = "make labelstudio-venv"
_CREDENTIALS = "credentials.env"
# Label Studio 1.23 refuses ML backends and webhooks on loopback and private networks (its
# SSRF protection), and `lamflow ml-backend` runs on 127.0.0.1. We lift its default list and
# ban all of it again but loopback: then any project's ML backend, webhook or storage URL may
# reach services on this machine's loopback, and still nothing else private. Fine for a server
# on 127.0.0.1 that only trusted users reach (docs/ml_backend.md, "Loopback").
_STILL_BANNED = (
    "0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,169.254.0.0/16,172.16.0.0/12,192.0.0.0/24,"
    "192.0.2.0/24,192.88.99.0/24,192.168.0.0/16,198.18.0.0/15,198.51.100.0/24,203.0.113.0/24,"
    "224.0.0.0/4,233.252.0.0/24,240.0.0.0/4,255.255.255.255/32,::/128,::ffff:0:0/96,"
    "::ffff:0:0:0/96,64:ff9b::/96,64:ff9b:1::/48,100::/64,2001:0000::/32,2001:20::/28,"
    "2001:db8::/32,2002::/16,fc00::/7,fe80::/10,ff00::/8"
)  # LS's default list (core/utils/io.py `validate_ip`) less 127.0.0.0/8 and ::1/128
_LOOPBACK_ONLY = {
    "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
    "LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS": _STILL_BANNED,
}


def label_studio_binary() -> str:
    """`$LAMFLOW_LABEL_STUDIO`, else `<repo>/.venv-labelstudio/bin/label-studio`, else PATH."""
    override = os.environ.get("LAMFLOW_LABEL_STUDIO")
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override
        raise LamflowError(f"LAMFLOW_LABEL_STUDIO={override} is not an executable file")
    venv = REPO / ".venv-labelstudio" / "bin" / "label-studio"
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv)
    found = shutil.which("label-studio")
    if found:
        return found
    raise LamflowError(
        f"Label Studio executable `label-studio` not found (looked at $LAMFLOW_LABEL_STUDIO, "
        f"{venv}, PATH): install it with `{INSTALL_HINT}`"
    )


def free_port() -> int:
    """A free loopback port in 20000..45000 (away from the defaults of the other servers)."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not 20000 <= port <= 45000:
            port = 20000 + port % 25000
        if port_free(port):
            return port
    raise LamflowError("no free port found on 127.0.0.1")


@dataclass
class Credentials:
    """The admin account of one data folder; `token` is what API calls send."""

    username: str
    password: str
    token: str

    def __repr__(self) -> str:  # never print the secrets
        return f"Credentials(username={self.username!r}, password='***', token='***')"


def credentials(data_dir: Path = DEFAULT_DIR) -> Credentials:
    """The credentials kept for this data folder, generated (mode 600) on first use."""
    stored = data_dir / _CREDENTIALS
    if stored.exists():
        values = dict(line.split("=", 1) for line in stored.read_text().splitlines() if "=" in line)
        try:
            return Credentials(
                values["LABEL_STUDIO_USERNAME"],
                values["LABEL_STUDIO_PASSWORD"],
                values["LABEL_STUDIO_API_KEY"],
            )
        except KeyError as exc:
            raise LamflowError(
                f"{stored} lacks {exc.args[0]}: remove {data_dir} to start afresh"
            ) from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    # Label Studio ignores a user token of 5 characters or fewer; hex keeps it header-safe.
    creds = Credentials(
        f"lamflow-{secrets.token_hex(3)}@localhost",
        secrets.token_urlsafe(24),
        secrets.token_hex(20),
    )
    fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"LABEL_STUDIO_USERNAME={creds.username}\n")
        fh.write(f"LABEL_STUDIO_PASSWORD={creds.password}\n")
        fh.write(f"LABEL_STUDIO_API_KEY={creds.token}\n")
    return creds


@dataclass
class LabelStudioServer:
    """One `label-studio start` process bound to 127.0.0.1:port, all its state in data_dir.

    Pass the same data_dir and port to `start()` again after `stop()`/`kill()` to get the same
    projects and tasks back (the SQLite database is data_dir/data/label_studio.sqlite3).
    """

    data_dir: Path
    port: int
    creds: Credentials
    proc: subprocess.Popen[bytes] | None = None
    allow_loopback: bool = True  # ML backends / webhooks on 127.0.0.1 (`lamflow ml-backend`)

    @classmethod
    def with_free_port(cls, data_dir: Path) -> LabelStudioServer:
        return cls(data_dir, free_port(), credentials(data_dir))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "label-studio.log"

    def env(self) -> dict[str, str]:
        """Environment that points `LabelStudioClient.from_env()` at this server."""
        return {"LABEL_STUDIO_URL": self.url, "LABEL_STUDIO_API_KEY": self.creds.token}

    def _child_env(self) -> dict[str, str]:
        data = self.data_dir.resolve()
        xdg = data / "xdg"  # LS also writes a config and cache dir under the user's home
        return os.environ | {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data / "data"),
            "DJANGO_DB": "sqlite",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "XDG_CONFIG_HOME": str(xdg / "config"),
            "XDG_CACHE_HOME": str(xdg / "cache"),
            "XDG_DATA_HOME": str(xdg / "data"),
            "LABEL_STUDIO_USERNAME": self.creds.username,
            "LABEL_STUDIO_PASSWORD": self.creds.password,
            "LABEL_STUDIO_USER_TOKEN": self.creds.token,
            **(_LOOPBACK_ONLY if self.allow_loopback else {}),
        }

    def _command(self) -> list[str]:
        return [
            label_studio_binary(),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str((self.data_dir / "data").resolve()),
            "--enable-legacy-api-token",  # lets `Authorization: Token <key>` work
        ]

    def start(self, timeout: float = 120.0) -> LabelStudioServer:
        """Start the server and wait until `whoami` answers with our token.

        The first start of a data folder migrates a fresh SQLite database (~25-45 s); later
        starts take ~5-10 s.
        """
        if not port_free(self.port):
            raise LamflowError(f"port {self.port} on 127.0.0.1 is in use: pass another --port")
        command = self._command()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._child_env(),
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LamflowError(
                    f"Label Studio exited with code {self.proc.returncode}; see {self.log_path}"
                )
            status = self._whoami_status()
            if status == 200:
                return self
            if status in (401, 403):
                self.stop()
                raise LamflowError(
                    f"Label Studio on {self.url} refuses the token in "
                    f"{self.data_dir / _CREDENTIALS}: it does not match the database; "
                    f"remove {self.data_dir} to start afresh"
                )
            time.sleep(0.5)
        self.stop()
        raise LamflowError(f"Label Studio did not answer on {self.url} within {timeout:.0f}s")

    def _whoami_status(self) -> int | None:
        import requests

        try:
            resp = requests.get(
                f"{self.url}/api/current-user/whoami",
                headers={"Authorization": f"Token {self.creds.token}"},
                timeout=(1, 5),
            )
        except requests.RequestException:
            return None
        return resp.status_code

    def ready(self) -> bool:
        """True once an authenticated `whoami` succeeds."""
        return self._whoami_status() == 200

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM to the process group), SIGKILL if it lingers."""
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        """Abrupt death (SIGKILL), as in a crash: for reliability tests."""
        kill_process(self.proc)


def _state_file(data_dir: Path) -> Path:
    return data_dir / "server.json"


def up(data_dir: Path = DEFAULT_DIR, port: int = DEFAULT_PORT) -> str:
    """Start the project's server in the background (idempotent); returns its URL."""
    data_dir = data_dir.resolve()
    running = running_state(_state_file(data_dir))
    if running:
        return str(running["url"])
    server = LabelStudioServer(data_dir, port, credentials(data_dir)).start()
    pid = server.proc.pid if server.proc is not None else -1
    write_state(_state_file(data_dir), pid, url=server.url)
    return server.url


def down(data_dir: Path = DEFAULT_DIR) -> bool:
    """Stop the server started by `up`; False if none was running."""
    return stop_background(_state_file(data_dir.resolve()))


def env_lines(data_dir: Path = DEFAULT_DIR) -> list[str]:
    """`export` lines for a shell (the token goes to stdout only when asked for)."""
    state = _state_file(data_dir.resolve())
    if not state.exists():
        raise LamflowError("no Label Studio server running: start one with `make labelstudio-up`")
    url = json.loads(state.read_text())["url"]
    return [
        f"export LABEL_STUDIO_URL={url}",
        f"export LABEL_STUDIO_API_KEY={credentials(data_dir).token}",
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lamflow.labelstudio")
    parser.add_argument("action", choices=("up", "down", "env"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            url = up(args.dir, args.port)
            print(f"Label Studio on {url}; data in {args.dir}")
            where = "" if args.dir == DEFAULT_DIR else f" --dir {args.dir}"
            print(f"API token: eval $({sys.executable} -m lamflow.labelstudio env{where})")
            print(f"login (username, password): {args.dir / _CREDENTIALS}")
        elif args.action == "down":
            print("stopped" if down(args.dir) else "no server was running")
        else:
            print("\n".join(env_lines(args.dir)))
    except LamflowError as exc:
        print(f"lamflow: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
