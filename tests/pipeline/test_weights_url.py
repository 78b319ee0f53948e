"""lamflow.weights.local_weights_path: fsspec URLs copied once into the weights cache."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from lam.errors import LamflowError
from lam.pretrained import PretrainedWeights, resolve_weights
from lamflow import weights

DATA = b"remote weights\n" * 1000


@pytest.fixture()
def memory_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    monkeypatch.setenv("LAMFLOW_CACHE_DIR", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/weights-test/bucket/w.pth", DATA)
    yield "memory://weights-test/bucket/w.pth"
    fs.rm("/weights-test", recursive=True)


def test_local_paths_are_returned_unchanged(tmp_path: Path) -> None:
    assert weights.local_weights_path("some/dir/w.pth") == "some/dir/w.pth"
    assert weights.local_weights_path(str(tmp_path / "w.pth")) == str(tmp_path / "w.pth")
    assert weights.local_weights_path(f"file://{tmp_path}/w.pth") == f"{tmp_path}/w.pth"


def test_memory_url_is_copied_once_and_verified(
    memory_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = Path(weights.local_weights_path(memory_url))
    assert local.is_relative_to(tmp_path / "cache") and local.name == "w.pth"
    assert local.read_bytes() == DATA
    assert [p.name for p in local.parent.iterdir()] == ["w.pth"]  # no temporary left

    # the second call reuses the copy without reading the object again
    def no_copy(*args: object) -> None:
        raise AssertionError("copied twice")

    monkeypatch.setattr(weights, "_copy", no_copy)
    assert weights.local_weights_path(memory_url) == str(local)

    spec = PretrainedWeights("w.pth", hashlib.sha256(DATA).hexdigest(), "http://unused", "test")
    assert resolve_weights(spec, str(local), download=False) == local


def test_same_name_in_two_buckets_is_kept_apart(memory_url: str) -> None:
    other = "memory://weights-test/other/w.pth"
    fsspec.filesystem("memory").pipe_file("/weights-test/other/w.pth", b"other bytes")
    first, second = weights.local_weights_path(memory_url), weights.local_weights_path(other)
    assert first != second
    assert Path(second).read_bytes() == b"other bytes" and Path(first).read_bytes() == DATA


def test_missing_object_names_the_url(memory_url: str) -> None:
    url = "memory://weights-test/bucket/nope.pth"
    with pytest.raises(FileNotFoundError, match="memory://weights-test/bucket/nope.pth"):
        weights.local_weights_path(url)


def test_transient_read_errors_are_retried(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "_RETRY_DELAYS_S", (0.0, 0.0))
    real_copy = weights._copy
    calls: list[int] = []

    def flaky(*args: object) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(weights, "_copy", flaky)
    assert Path(weights.local_weights_path(memory_url)).read_bytes() == DATA
    assert len(calls) == 3


def test_a_changed_remote_object_is_copied_again(memory_url: str) -> None:
    first = Path(weights.local_weights_path(memory_url))
    fsspec.filesystem("memory").pipe_file("/weights-test/bucket/w.pth", b"a new release")
    again = Path(weights.local_weights_path(memory_url))
    assert again == first and again.read_bytes() == b"a new release"


def test_persistent_read_errors_fail_naming_the_url(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "_RETRY_DELAYS_S", (0.0, 0.0))

    def broken(*args: object) -> None:
        raise ConnectionResetError("reset by peer")

    monkeypatch.setattr(weights, "_copy", broken)
    with pytest.raises(LamflowError, match=f"{memory_url} .* failed after 3 tries"):
        weights.local_weights_path(memory_url)
