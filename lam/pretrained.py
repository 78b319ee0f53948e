"""Published pretrained weights: where their files are found, how they are verified, fetched.

A network's weights are a file named in a table (`EDGENETS`) with its sha256 and a pinned
upstream URL. `resolve_weights` looks for the file in a fixed order of local places (the user's
path, $LAMFLOW_WEIGHTS, the shared folder beside the repository, the download cache) and
returns the first whose sha256 matches; only if none does, and downloads are allowed, does it
fetch the URL into the cache. A file whose hash differs is never used: a truncated download, a
different release or a fine-tuned copy under the published name would otherwise load
silently into the wrong network, or into the right one with the wrong numbers.

Stdlib only, and torch to load a file; fsspec URLs become local files in `lamflow.weights`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO

import lam
from lam.errors import LamflowError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PretrainedWeights:
    """One published weight file: its name, full sha256 hex digest, pinned URL, licence."""

    file: str  # e.g. "espnetv2_s_2.0_city_1024x512.pth"
    sha256: str  # full lowercase hex digest of the file's bytes
    url: str  # pinned upstream URL (a commit, never a branch)
    licence: str  # one line: the terms that bind whoever uses these weights


_EDGENETS_COMMIT = "2b232d3f7fb60658755dad1ebca0ffc895cc795e"
_EDGENETS_URL = (
    f"https://github.com/sacmehta/EdgeNets/raw/{_EDGENETS_COMMIT}"
    "/model/segmentation/model_zoo/{family}/{file}"
)
_CITYSCAPES_LICENCE = (
    "trained on Cityscapes: research and non-commercial use only (Cityscapes terms); "
    "code MIT (Sachin Mehta, EdgeNets)"
)
_PASCAL_LICENCE = (
    "trained on PASCAL VOC 2012 + COCO (images under their Flickr owners' terms: check them "
    "before commercial use); code MIT (Sachin Mehta, EdgeNets)"
)


def _edgenet(family: str, file: str, sha256: str, licence: str) -> PretrainedWeights:
    url = _EDGENETS_URL.format(family=family, file=file)
    return PretrainedWeights(file=file, sha256=sha256, url=url, licence=licence)


_EDGENETS: dict[str, PretrainedWeights] = {
    "espnetv2_s_1.0_city": _edgenet(
        "espnetv2",
        "espnetv2_s_1.0_city_1024x512.pth",
        "0918c833fed889e32901ce739b1784fdd2b79f95a9aea199a469ca3394dd7a14",
        _CITYSCAPES_LICENCE,
    ),
    "espnetv2_s_1.5_city": _edgenet(
        "espnetv2",
        "espnetv2_s_1.5_city_1024x512.pth",
        "0dbbda9126583d62f73dfdc28a59a30ab4564094ee6d28428b897a4e36c466b4",
        _CITYSCAPES_LICENCE,
    ),
    "espnetv2_s_2.0_city": _edgenet(
        "espnetv2",
        "espnetv2_s_2.0_city_1024x512.pth",
        "a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
        _CITYSCAPES_LICENCE,
    ),
    "dicenet_s_1.75_city": _edgenet(
        "dicenet",
        "dicenet_s_1.75_city_1024x512.pth",
        "3b00bf5392030be1646111d95e98ab27cb379c407bbb85ca94e2ce057ee401cf",
        _CITYSCAPES_LICENCE,
    ),
    "espnetv2_s_2.0_pascal": _edgenet(
        "espnetv2",
        "espnetv2_s_2.0_pascal_384x384.pth",
        "bc479586b0ba9254e02589020346931a14d99028ad6bac4817198be6d9e719a6",
        _PASCAL_LICENCE,
    ),
}
EDGENETS: Mapping[str, PretrainedWeights] = MappingProxyType(_EDGENETS)
"""The EdgeNets segmentation weights (github.com/sacmehta/EdgeNets, pinned commit), read-only."""

_TRUE = {"1", "true", "yes", "on"}
_REPO_ROOT = Path(lam.__file__).resolve().parents[1]
_TIMEOUT_S = 30.0  # per connect / per read of the download socket
_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 4.0)  # waits before the 2nd and 3rd download tries
_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) -> sha256: each file is hashed once per process.
_HASHES: dict[tuple[str, int, int], str] = {}


def weights_cache_dir() -> Path:
    """The download cache: $LAMFLOW_CACHE_DIR, else ~/.cache/lamflow/weights."""
    env = os.environ.get("LAMFLOW_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lamflow" / "weights"


def weights_search_paths(file: str, explicit: str | None = None) -> list[Path]:
    """Where `file` is looked for, in order: `explicit` (a local path, file or folder),
    $LAMFLOW_WEIGHTS/<file>, <repo root>/../shared/weights/edgenets/<file>, then the download
    cache <cache>/<file> ($LAMFLOW_CACHE_DIR or ~/.cache/lamflow/weights).

    `explicit` is taken as a folder holding `file` if it is an existing directory, else as the
    file itself. The shared folder is the one CI and this project's machines keep beside the
    repository (`<repo>/../shared`), whichever checkout `lam` was imported from.
    """
    if not file or Path(file).name != file:
        raise ValueError(f"weights file must be a bare file name, got {file!r}")
    paths: list[Path] = []
    if explicit:
        given = Path(explicit).expanduser()
        paths.append(given / file if given.is_dir() else given)
    env = os.environ.get("LAMFLOW_WEIGHTS")
    if env:
        paths.append(Path(env).expanduser() / file)
    paths.append(_REPO_ROOT.parent / "shared" / "weights" / "edgenets" / file)
    paths.append(weights_cache_dir() / file)
    return paths


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at `path`, computed once per (path, size, mtime) per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        digest = _HASHES[key] = h.hexdigest()
    return digest


def downloads_allowed(download: bool | None = None) -> bool:
    """`download` if given, else True unless $LAMFLOW_OFFLINE or $HF_HUB_OFFLINE is set true."""
    if download is not None:
        return download
    names = ("LAMFLOW_OFFLINE", "HF_HUB_OFFLINE")
    return not any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def resolve_weights(
    spec: PretrainedWeights,
    explicit: str | None = None,
    *,
    download: bool | None = None,
    progress: bool = True,
) -> Path:
    """Local path of `spec`'s file, its sha256 checked.

    The first existing file among `weights_search_paths(spec.file, explicit)` whose sha256
    matches; else, if downloads are allowed (`download=None`: unless $LAMFLOW_OFFLINE=1 or
    $HF_HUB_OFFLINE=1), `spec.url` downloaded into the cache (a temporary file, hash checked,
    then renamed into place; a progress bar on stderr if `progress`). Otherwise LamflowError,
    in one line naming the file, the expected sha256, every place looked in and each file found
    there with another sha256.
    """
    places = weights_search_paths(spec.file, explicit)
    mismatched: list[str] = []
    for path in places:
        if not path.is_file():
            continue
        digest = file_sha256(path)
        if digest == spec.sha256:
            return path
        mismatched.append(f"{path} has sha256 {digest}")
    looked = ", ".join(str(p) for p in places)
    what = f"weights {spec.file} (sha256 {spec.sha256})"
    wrong = f"; refused: {'; '.join(mismatched)}" if mismatched else ""
    if not downloads_allowed(download):
        raise LamflowError(
            f"{what} not found; looked in: {looked}{wrong}; downloads are off "
            "(LAMFLOW_OFFLINE/HF_HUB_OFFLINE): put the file in one of those places or set "
            "LAMFLOW_WEIGHTS to its folder"
        )
    dest = weights_cache_dir() / spec.file
    try:
        _download(spec, dest, progress)
    except LamflowError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the server said
        raise LamflowError(
            f"{what} not found locally (looked in: {looked}{wrong}); {reason}"
        ) from exc
    return dest


def _download(spec: PretrainedWeights, dest: Path, progress: bool) -> None:
    """Fetch `spec.url` to `dest` through a temporary sibling; the hash is checked before the
    rename, so `dest` only ever holds the verified file. Connection errors, timeouts, HTTP 5xx
    and 429 and short reads are retried (len(_RETRY_DELAYS_S) times); other HTTP errors and a
    hash mismatch are not."""
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(len(_RETRY_DELAYS_S) + 1):
            try:
                with tmp.open("wb") as fh:
                    digest = _fetch(spec.url, fh, spec.file, progress)
                break
            except _Transient as exc:
                if attempt == len(_RETRY_DELAYS_S):
                    raise LamflowError(
                        f"download of {spec.url} failed after {attempt + 1} tries: {exc}"
                    ) from exc
                time.sleep(_RETRY_DELAYS_S[attempt])
        if digest != spec.sha256:
            raise LamflowError(
                f"download of {spec.url} has sha256 {digest}, expected {spec.sha256}; deleted"
            )
        os.replace(tmp, dest)
    except OSError as exc:  # the cache itself: not writable, disk full
        raise LamflowError(f"cannot write the weights cache {dest.parent}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):  # absent, or its folder could not be made
            tmp.unlink()


class _Transient(Exception):
    """A download failure worth another try."""


def _fetch(url: str, out: BinaryIO, label: str, progress: bool) -> str:
    """Stream `url` into `out`; returns the sha256 of the bytes received. Network failures
    worth another try raise _Transient, a write error of `out` an OSError wrapped in
    _LocalWriteError (so that it is not taken for a network one)."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            bar = _Progress(label, total, progress)
            while chunk := resp.read(_CHUNK):
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _LocalWriteError(exc) from exc
                h.update(chunk)
                done += len(chunk)
                bar.update(done)
            bar.close()
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        raise LamflowError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except _LocalWriteError as exc:
        raise exc.error from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        raise _Transient(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc
    if total is not None and done != total:
        raise _Transient(f"got {done} of {total} bytes")
    return h.hexdigest()


class _LocalWriteError(Exception):
    """Carries an OSError of the local file past the handler of network OSErrors."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Progress:
    """A one-line progress bar on stderr, redrawn at most every 0.2 s."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != self.total):
            return
        self.last = now
        mb = f"{done / 1e6:.1f}"
        if self.total:
            line = f"downloading {self.name}: {100 * done // self.total:3d}% "
            line += f"({mb}/{self.total / 1e6:.1f} MB)"
        else:
            line = f"downloading {self.name}: {mb} MB"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\n")
            sys.stderr.flush()


def load_state_dict_verified(path: Path) -> dict[str, torch.Tensor]:
    """The state dict saved at `path` ({name: tensor}), loaded on the CPU.

    `torch.load(..., weights_only=True)`: no pickled code runs. LamflowError names the file if
    it cannot be read as such, or holds anything but string keys mapping to tensors.
    """
    import torch  # here, so that finding and fetching weights does not load torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise LamflowError(f"{path} is not a loadable torch file: {exc}".splitlines()[0]) from exc
    if not isinstance(obj, Mapping):
        raise LamflowError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LamflowError(
                f"{path} is not a state dict of tensors: entry {key!r} is a {type(value).__name__}"
            )
    return dict(obj)
