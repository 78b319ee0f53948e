"""lam.pretrained: where weight files are found, how they are verified and downloaded.

Downloads are tested against a loopback HTTP server started here; nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lam import pretrained
from lam.errors import LamflowError
from lam.pretrained import (
    EDGENETS,
    PretrainedWeights,
    load_state_dict_verified,
    resolve_weights,
    weights_search_paths,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "weights" / "edgenets"
GOOD = b"fake weights, version 1\n" * 100
BAD = b"something else entirely\n" * 100


def _spec(data: bytes = GOOD, url: str = "http://127.0.0.1:9/w.pth") -> PretrainedWeights:
    return PretrainedWeights(
        file="w.pth", sha256=hashlib.sha256(data).hexdigest(), url=url, licence="test only"
    )


@pytest.fixture()
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Four empty folders standing in for explicit, $LAMFLOW_WEIGHTS, shared and the cache;
    downloads allowed (the session sets HF_HUB_OFFLINE) and retried without waiting."""
    dirs = {name: tmp_path / name for name in ("explicit", "env", "repo", "cache")}
    for d in dirs.values():
        d.mkdir()
    dirs["shared"] = tmp_path / "shared" / "weights" / "edgenets"
    dirs["shared"].mkdir(parents=True)
    monkeypatch.setattr(pretrained, "_REPO_ROOT", dirs["repo"])
    monkeypatch.setattr(pretrained, "_RETRY_DELAYS_S", (0.0, 0.0))
    monkeypatch.setenv("LAMFLOW_WEIGHTS", str(dirs["env"]))
    monkeypatch.setenv("LAMFLOW_CACHE_DIR", str(dirs["cache"]))
    for name in ("LAMFLOW_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return dirs


def test_search_paths_are_explicit_env_shared_cache(places: dict[str, Path]) -> None:
    expected = [places[k] / "w.pth" for k in ("explicit", "env", "shared", "cache")]
    assert weights_search_paths("w.pth", str(places["explicit"])) == expected
    # an explicit path that is not a folder is the file itself
    own = places["explicit"] / "mine.pth"
    assert weights_search_paths("w.pth", str(own))[0] == own
    assert weights_search_paths("w.pth") == expected[1:]
    with pytest.raises(ValueError, match="bare file name"):
        weights_search_paths("../w.pth")


def test_first_matching_place_wins_in_order(places: dict[str, Path]) -> None:
    order = ["explicit", "env", "shared", "cache"]
    for name in order:
        (places[name] / "w.pth").write_bytes(GOOD)
    for name in order:
        got = resolve_weights(_spec(), str(places["explicit"]), download=False)
        assert got == places[name] / "w.pth"
        got.unlink()
    with pytest.raises(LamflowError):
        resolve_weights(_spec(), str(places["explicit"]), download=False)


def test_missing_file_is_one_line_naming_file_hash_and_every_place(
    places: dict[str, Path],
) -> None:
    spec = _spec()
    with pytest.raises(LamflowError) as err:
        resolve_weights(spec, str(places["explicit"]), download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert spec.file in msg and spec.sha256 in msg
    for name in ("explicit", "env", "shared", "cache"):
        assert str(places[name] / "w.pth") in msg


def test_corrupt_file_is_refused_and_named(places: dict[str, Path]) -> None:
    bad = places["env"] / "w.pth"
    bad.write_bytes(BAD)
    with pytest.raises(LamflowError) as err:
        resolve_weights(_spec(), download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{bad} has sha256 {hashlib.sha256(BAD).hexdigest()}" in msg
    # a later place holding the right bytes is used instead of the corrupt one
    (places["cache"] / "w.pth").write_bytes(GOOD)
    assert resolve_weights(_spec(), download=False) == places["cache"] / "w.pth"


def test_hash_is_recomputed_when_the_file_changes(places: dict[str, Path]) -> None:
    path = places["env"] / "w.pth"
    path.write_bytes(GOOD)
    assert resolve_weights(_spec(), download=False) == path
    path.write_bytes(BAD + b"x")  # another size, so another cache key
    with pytest.raises(LamflowError, match="has sha256"):
        resolve_weights(_spec(), download=False)


@dataclass
class _Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    fail_first: int = 0  # answer 503 to this many requests first
    truncate: bool = False  # announce more bytes than sent, then close


@pytest.fixture()
def server() -> Iterator[_Server]:
    state = _Server(base="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.hits.append(self.path)
            if state.fail_first > 0:
                state.fail_first -= 1
                self.send_error(503)
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + (100 if state.truncate else 0)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_lands_in_cache_once(
    places: dict[str, Path], server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/w.pth"] = GOOD
    spec = _spec(url=f"{server.base}/w.pth")
    got = resolve_weights(spec)
    assert got == places["cache"] / "w.pth"
    assert got.read_bytes() == GOOD
    assert "downloading w.pth" in capsys.readouterr().err
    assert resolve_weights(spec) == got
    assert server.hits == ["/w.pth"]
    assert sorted(p.name for p in places["cache"].iterdir()) == ["w.pth"]


def test_transient_server_errors_are_retried(places: dict[str, Path], server: _Server) -> None:
    server.files["/w.pth"] = GOOD
    server.fail_first = 2
    got = resolve_weights(_spec(url=f"{server.base}/w.pth"), progress=False)
    assert got.read_bytes() == GOOD
    assert len(server.hits) == 3


def test_download_with_wrong_hash_is_deleted_and_reported(
    places: dict[str, Path], server: _Server
) -> None:
    server.files["/w.pth"] = BAD
    spec = _spec(url=f"{server.base}/w.pth")
    with pytest.raises(LamflowError) as err:
        resolve_weights(spec, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert spec.url in msg and spec.sha256 in msg and hashlib.sha256(BAD).hexdigest() in msg
    assert list(places["cache"].iterdir()) == []


def test_truncated_download_leaves_nothing(places: dict[str, Path], server: _Server) -> None:
    server.files["/w.pth"] = GOOD
    server.truncate = True
    spec = _spec(url=f"{server.base}/w.pth")
    with pytest.raises(LamflowError, match="failed after 3 tries"):
        resolve_weights(spec, progress=False)
    assert len(server.hits) == 3
    assert list(places["cache"].iterdir()) == []


def test_http_404_names_the_url_without_retrying(places: dict[str, Path], server: _Server) -> None:
    spec = _spec(url=f"{server.base}/missing.pth")
    with pytest.raises(LamflowError) as err:
        resolve_weights(spec, progress=False)
    assert spec.url in str(err.value) and "404" in str(err.value)
    assert server.hits == ["/missing.pth"]
    assert list(places["cache"].iterdir()) == []


def test_connection_refused_names_the_url(places: dict[str, Path]) -> None:
    with socket.socket() as sock:  # a port nobody listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = _spec(url=f"http://127.0.0.1:{port}/w.pth")
    with pytest.raises(LamflowError) as err:
        resolve_weights(spec, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and spec.url in msg and spec.file in msg
    assert list(places["cache"].iterdir()) == []


def test_unwritable_cache_is_named(
    places: dict[str, Path], server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/w.pth"] = GOOD
    blocker = places["cache"] / "not-a-folder"
    blocker.write_bytes(b"")
    monkeypatch.setenv("LAMFLOW_CACHE_DIR", str(blocker / "sub"))
    with pytest.raises(LamflowError, match=re.escape(f"cache {blocker / 'sub'}")):
        resolve_weights(_spec(url=f"{server.base}/w.pth"), progress=False)
    assert server.hits == []


@pytest.mark.parametrize("var", ["LAMFLOW_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_env_disables_downloads(
    places: dict[str, Path], server: _Server, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    server.files["/w.pth"] = GOOD
    spec = _spec(url=f"{server.base}/w.pth")
    monkeypatch.setenv(var, "1")
    with pytest.raises(LamflowError, match="downloads are off"):
        resolve_weights(spec)
    assert server.hits == []
    # an explicit download=True overrides the environment
    assert resolve_weights(spec, download=True, progress=False).read_bytes() == GOOD


def test_load_state_dict_verified(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"a.weight": torch.ones(2, 3), "a.bias": torch.zeros(2)}, good)
    sd = load_state_dict_verified(good)
    assert set(sd) == {"a.weight", "a.bias"} and sd["a.weight"].shape == (2, 3)

    for name, obj in [("list.pth", [torch.ones(1)]), ("meta.pth", {"epoch": 3})]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(LamflowError, match=name):
            load_state_dict_verified(tmp_path / name)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(BAD)
    with pytest.raises(LamflowError) as err:
        load_state_dict_verified(junk)
    assert str(junk) in str(err.value) and "\n" not in str(err.value)


def test_edgenets_table_is_read_only_and_pinned() -> None:
    assert set(EDGENETS) == {
        "espnetv2_s_1.0_city",
        "espnetv2_s_1.5_city",
        "espnetv2_s_2.0_city",
        "dicenet_s_1.75_city",
        "espnetv2_s_2.0_pascal",
    }
    with pytest.raises(TypeError):
        EDGENETS["x"] = EDGENETS["espnetv2_s_2.0_city"]  # type: ignore[index]
    for spec in EDGENETS.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert spec.url.endswith("/" + spec.file) and pretrained._EDGENETS_COMMIT in spec.url
        family = "dicenet" if spec.file.startswith("dicenet") else "espnetv2"
        assert f"/model_zoo/{family}/" in spec.url
        assert "MIT" in spec.licence
        assert ("Cityscapes" in spec.licence) == ("_city_" in spec.file)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared weights at {SHARED}")
@pytest.mark.parametrize("name", sorted(EDGENETS))
def test_real_weights_resolve_from_shared(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAMFLOW_WEIGHTS", raising=False)
    monkeypatch.setenv("LAMFLOW_CACHE_DIR", str(tmp_path))
    spec = EDGENETS[name]
    path = resolve_weights(spec, download=False)
    assert path == SHARED / spec.file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    sd = load_state_dict_verified(path)
    assert any(k.startswith("base_net.") for k in sd)
