"""Storage through fsspec URLs (file://, s3://, memory://, or plain local paths).

Every stage reads and writes through these helpers, so the same code runs on a laptop folder,
an S3 bucket or in-memory test storage. Keys built from drive ids or file names go through
`safe_name`, so they can never escape their prefix.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from lam.errors import LamflowError
from lam.image_files import IMAGE_SUFFIXES

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def safe_name(name: str, what: str = "name") -> str:
    """Return `name` if it is one harmless path component, else raise naming it.

    Allowed: letters, digits, '.', '_' and '-', not starting with '.' or '-', at most 200
    characters. This rejects '..', absolute paths, separators, spaces and control characters.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise LamflowError(f"unsafe {what} {name!r}: use letters, digits, '.', '_', '-' only")
    return name


def s3_options() -> dict[str, Any]:
    """s3fs options from the environment (credentials are read by botocore, never logged).

    LAMFLOW_S3_ENDPOINT (or AWS_ENDPOINT_URL) points s3fs at a non-AWS server such as the
    project's SeaweedFS. No region is passed: SeaweedFS rejects region-specific signing.
    LAMFLOW_S3_CREDENTIALS_BLOCK names a Prefect Secret block holding
    {"aws_access_key_id": ..., "aws_secret_access_key": ...}, used when the environment has no
    AWS_ACCESS_KEY_ID (loaded once per process, e.g. once per Dask worker).
    """
    endpoint = os.environ.get("LAMFLOW_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    # No listings cache: s3fs would keep every directory listing for the life of the process
    # and answer `exists`/`ls` from it, so a long-lived process (`lamflow serve`, a Dask worker)
    # would never see drops, records or leases other processes wrote after its first look.
    opts: dict[str, Any] = {"use_listings_cache": False}
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    block = os.environ.get("LAMFLOW_S3_CREDENTIALS_BLOCK")
    if block and not os.environ.get("AWS_ACCESS_KEY_ID"):
        key, secret = _block_credentials(block)
        opts.update(key=key, secret=secret)
    return opts


@functools.lru_cache(maxsize=4)
def _block_credentials(name: str) -> tuple[str, str]:
    """(access key, secret key) from the Prefect Secret block `name`."""
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # sync call outside an event loop
        value = block.get()
    except ValueError as exc:
        raise LamflowError(f"no Prefect Secret block {name!r}: {exc}") from exc
    if not isinstance(value, dict) or not {"aws_access_key_id", "aws_secret_access_key"} <= set(
        value
    ):
        raise LamflowError(
            f"Prefect Secret block {name!r} must hold aws_access_key_id and aws_secret_access_key"
        )
    return str(value["aws_access_key_id"]), str(value["aws_secret_access_key"])


def get_fs(url: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for `url`; s3:// picks up `s3_options()`."""
    if url.startswith(("s3://", "s3a://")):
        options = {**s3_options(), **options}
    try:
        return url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise LamflowError(f"cannot open storage {url!r}: {exc}") from exc


def join(url: str, *parts: str) -> str:
    """Join URL components with '/', whatever the protocol (never os.path on URLs)."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _local_path(url: str) -> str | None:
    """The OS path of a plain local path or file:// URL, else None. Local reads and writes
    skip fsspec: its per-call Python work (URL parsing, file objects) competes with the model
    for the interpreter while a drop is labeled (3 writes and 2 reads a frame)."""
    if url.startswith("file://"):
        return url[len("file://") :]
    return None if "://" in url or "::" in url else url


def exists(url: str) -> bool:
    local = _local_path(url)
    if local is not None:
        return os.path.exists(local)
    fs, path = get_fs(url)
    return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    """Whole object at `url`; FileNotFoundError names the URL."""
    local = _local_path(url)
    if local is not None:
        try:
            with open(local, "rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no such file: {url}") from exc
    fs, path = get_fs(url)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no such file: {url}") from exc


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write so readers never see a partial object.

    Local and memory file systems: write a temporary sibling, then rename over the target.
    The temporary is hidden (".NAME.tmp-XXXXXXXX": no item name starts with '.', see
    `safe_name`); a process killed mid-write leaves it behind, and `remove_temporaries`
    deletes such leftovers. S3: a single PUT is already atomic (the object appears complete or
    not at all) and leaves nothing behind.
    """
    local = _local_path(url)
    if local is not None:
        head, name = os.path.split(local)
        if head:
            os.makedirs(head, exist_ok=True)
        tmp = os.path.join(head, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        _rename(tmp, local)
        return
    fs, path = get_fs(url)
    parent, slash, name = path.rpartition("/")
    if "s3" in _protocols(fs):
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}{slash}.{name}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    fs.mv(tmp, path)


_rename = os.replace  # the atomic step of a local write (a test stands a crash in for it)


def write_text_atomic(url: str, text: str) -> None:
    write_bytes_atomic(url, text.encode("utf-8"))


_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{8}$")


def is_temporary(name: str) -> bool:
    """True for the name of an atomic write's temporary file (a write in progress, or one a
    killed process left behind)."""
    return bool(_TEMPORARY.search(name))


def remove_temporaries(url: str, min_age_seconds: float = 10.0) -> list[str]:
    """Delete the atomic writes' temporary files directly under folder `url` that are older
    than `min_age_seconds`; returns their names. Call it when no write into `url` should be in
    progress (e.g. under the lease of the run that owns it): a temporary there was left by a
    killed writer. The age guard spares a write that is in progress after all (a second
    `lamflow annotate` into the same folder): a write takes milliseconds, not ten seconds."""
    fs, path = get_fs(url)
    if "s3" in _protocols(fs):
        return []  # S3 writes leave no temporaries
    removed = []
    now = time.time()
    for name in list_dir(url):
        if not is_temporary(name):
            continue
        full = f"{path.rstrip('/')}/{name}"
        try:
            if now - float(fs.info(full).get("mtime") or 0.0) < min_age_seconds:
                continue
            fs.rm(full)
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed


def list_images(url: str) -> list[tuple[str, str]]:
    """Frames directly under `url`, sorted: [(stem, url), ...] for .jpg/.jpeg/.png/...

    Raises FileNotFoundError if the folder does not exist.
    """
    fs, path = get_fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such image folder: {url}")
    proto = _protocols(fs)[0]
    out = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES:
            out.append((stem, _unstrip(proto, entry)))
    return out


def list_dir(url: str) -> list[str]:
    """Names (not paths) directly under `url`; empty if it does not exist."""
    fs, path = get_fs(url)
    if not fs.exists(path):
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False))


def find_by_stem(url: str, stem: str, suffixes: tuple[str, ...] = (".png",)) -> str | None:
    """URL of `stem` + one of `suffixes` under `url`, or None."""
    for suffix in suffixes:
        candidate = join(url, stem + suffix)
        if exists(candidate):
            return candidate
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_lines(url: str) -> Iterator[str]:
    if not exists(url):
        return iter(())
    return iter(read_text(url).splitlines())


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _unstrip(protocol: str, path: str) -> str:
    """Turn a protocol-less path returned by `fs.ls` back into a URL."""
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path.lstrip('/')}" if protocol != "memory" else f"memory://{path}"


_MEMORY_CREATE = threading.Lock()  # memory:// is one process's dict


def create_exclusive(url: str, data: bytes) -> bool:
    """Create the object `url` holding `data` unless one exists; True if `url` now holds `data`.

    Atomic: of concurrent creators of one URL exactly one wins; leases build on it. An object
    already there with the very same bytes also gives True (a retried S3 PUT whose first try
    landed), so a claim must put something unique, such as a token, in `data`.
    - Local files: `data` goes to a temporary sibling that is hard-linked to `url` (`link`
      fails if `url` exists), so a reader never sees a partial object; without hard links
      (some network mounts) an O_CREAT | O_EXCL create is the fallback.
    - S3: one PUT with `If-None-Match: *`; the server answers 412 if the key exists (AWS S3
      since 2024; SeaweedFS 4.48 measured: 16 racing PUTs, one 200 and fifteen 412). AWS's
      409 ConditionalRequestConflict (a concurrent conditional write) is retried.
    - memory://: under a process-wide lock (the store is this process's dict).
    Other stores raise LamflowError: fsspec offers them no atomic create-if-absent, and a
    check-then-write would let two creators both win.
    """
    fs, path = get_fs(url)
    protocols = _protocols(fs)
    if "file" in protocols or "local" in protocols:
        created = _create_local(path, data)
    elif "s3" in protocols:
        created = False
        for attempt in range(5):
            try:
                fs.pipe_file(path, data, mode="create")
                created = True
                break
            except OSError as exc:
                code = _s3_error_code(exc)
                if code == "ConditionalRequestConflict" and attempt < 4:
                    time.sleep(0.05 * 2**attempt)
                    continue
                if not isinstance(exc, FileExistsError) and code != "PreconditionFailed":
                    raise
                break
    elif "memory" in protocols:
        with _MEMORY_CREATE:
            created = not fs.exists(path)
            if created:
                fs.pipe_file(path, data)
    else:
        raise LamflowError(
            f"no atomic create-if-absent on {protocols[0]}:// ({url}): "
            "use a local path or s3:// for state that runs share"
        )
    if created:
        return True
    try:
        return bool(fs.cat_file(path) == data)
    except FileNotFoundError:  # created by another and deleted since: still not ours
        return False


def _create_local(path: str, data: bytes) -> bool:
    """create_exclusive on a local file system (see there)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    head, name = os.path.split(path)
    tmp = os.path.join(
        head, f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    )  # hidden, as in write_bytes_atomic
    with open(tmp, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    finally:
        os.unlink(tmp)


def _s3_error_code(exc: BaseException) -> str:
    """The S3 error code ('PreconditionFailed', ...) behind an s3fs error, else ''.

    s3fs turns a 412 into FileExistsError only when the server names the condition (AWS
    does); SeaweedFS does not, so it arrives as OSError(EINVAL) caused by a botocore error.
    """
    response = getattr(exc.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or {412: "PreconditionFailed", 409: "ConditionalRequestConflict"}.get(status, "")
