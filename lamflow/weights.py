"""A weights file named by an fsspec URL (s3://, memory://, ...), as a local path for `lam`.

`lam` reads local files only (it never imports fsspec), so a `weights` option that names an
object store is copied once into the download cache first; `lam.pretrained.resolve_weights`
then checks its sha256 like any other local file.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import fsspec

from lam.errors import LamflowError
from lam.pretrained import weights_cache_dir
from lamflow import storage

_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 4.0)  # waits before the 2nd and 3rd copy tries
_CHUNK = 1 << 20


def local_weights_path(url_or_path: str) -> str:
    """Local path of the weights at `url_or_path`.

    A plain local path is returned unchanged, a file:// URL as its path. Any other fsspec URL
    is copied into `<cache>/remote/<sha256(url)[:16]>/<file name>` (the URL's hash keeps two
    buckets' `w.pth` apart) and that path returned; a later call reuses the copy while the
    remote object keeps the same size. The copy goes through a temporary sibling and a
    rename, so the cached path never holds a partial file. Read errors other than a missing
    object are retried twice; FileNotFoundError names the URL.
    """
    if url_or_path.startswith("file://"):
        return url_or_path[len("file://") :]
    if "://" not in url_or_path and "::" not in url_or_path:
        return url_or_path
    name = url_or_path.rstrip("/").rsplit("/", 1)[-1]
    storage.safe_name(name, "weights file name")
    key = hashlib.sha256(url_or_path.encode("utf-8")).hexdigest()[:16]
    dest = weights_cache_dir() / "remote" / key / name
    fs, path = storage.get_fs(url_or_path)
    attempt = 0
    while True:
        try:
            size = fs.info(path).get("size")
            if dest.is_file() and size is not None and dest.stat().st_size == int(size):
                return str(dest)
            _copy(fs, path, dest)
            return str(dest)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no such weights file: {url_or_path}") from exc
        except OSError as exc:
            if attempt == len(_RETRY_DELAYS_S):
                raise LamflowError(
                    f"copying weights {url_or_path} to {dest} failed after {attempt + 1} "
                    f"tries: {exc}"
                ) from exc
            time.sleep(_RETRY_DELAYS_S[attempt])
            attempt += 1


def _copy(fs: fsspec.AbstractFileSystem, path: str, dest: Path) -> None:
    """Stream `path` on `fs` to `dest` through a temporary sibling, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with fs.open(path, "rb") as src, tmp.open("wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
