"""Leases (flows.state) and the atomic create they rest on (lamflow.storage.create_exclusive).

Races are run with threads released together by a barrier, several rounds each: of any number
of claimants exactly one may win, whatever the timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flows.state import (
    RUN_LEASES,
    acquire_lease,
    held_lease,
    release_lease,
    renew_lease,
)
from lam.errors import LamflowError
from lamflow.storage import create_exclusive

T = TypeVar("T")


# Threads live across races: fsspec caches a file system per thread, and a fresh s3fs one costs
# about a second to set up.
_POOL = ThreadPoolExecutor(max_workers=12, thread_name_prefix="claimant")


def _race(n: int, claim: Callable[[int], T]) -> list[T]:
    """Run `claim(i)` for i in 0..n-1 in n threads released together; their results."""
    barrier = threading.Barrier(n, timeout=30)

    def run(i: int) -> T:
        barrier.wait()
        return claim(i)

    return [f.result() for f in [_POOL.submit(run, i) for i in range(n)]]


def _create_claim(url: str, i: int) -> bool:
    return create_exclusive(url, f"claim {i}".encode())


def _lease_files(root: Path, name: str, folder: str = "leases") -> list[str]:
    return sorted(p.name for p in (root / "state" / folder / name).iterdir())


# --- create_exclusive ---------------------------------------------------------------------


def test_create_exclusive_has_one_winner_among_racing_local_creators(tmp_path: Path) -> None:
    for rnd in range(10):
        url = str(tmp_path / "claims" / f"{rnd}.json")
        won = _race(12, partial(_create_claim, url))
        assert won.count(True) == 1, won
        winner = won.index(True)
        assert (tmp_path / "claims" / f"{rnd}.json").read_bytes() == f"claim {winner}".encode()
    assert not [p for p in (tmp_path / "claims").iterdir() if ".tmp-" in p.name]


def test_create_exclusive_is_idempotent_for_the_same_bytes_only(tmp_path: Path) -> None:
    url = str(tmp_path / "a.json")
    assert create_exclusive(url, b"token-1")
    assert create_exclusive(url, b"token-1")  # e.g. a retried PUT whose first try landed
    assert not create_exclusive(url, b"token-2")
    assert (tmp_path / "a.json").read_bytes() == b"token-1"


def test_create_exclusive_falls_back_to_o_excl_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError("hard links not supported here")

    monkeypatch.setattr("lamflow.storage.os.link", no_links)
    url = str(tmp_path / "b.json")
    won = _race(8, lambda i: create_exclusive(url, f"claim {i}".encode()))
    assert won.count(True) == 1


def test_create_exclusive_in_memory_and_refused_on_stores_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    url = "memory://lease-test/x.json"
    won = _race(8, lambda i: create_exclusive(url, f"claim {i}".encode()))
    assert won.count(True) == 1
    MemoryFileSystem().rm("/lease-test", recursive=True)

    class NoCreate(MemoryFileSystem):
        protocol = "nocreate"

    monkeypatch.setattr("lamflow.storage.get_fs", lambda url: (NoCreate(), "/x.json"))
    with pytest.raises(LamflowError, match="no atomic create-if-absent on nocreate://"):
        create_exclusive("nocreate://x.json", b"1")


# --- leases ---------------------------------------------------------------------------------


def test_only_one_of_many_racing_claims_gets_the_lease(tmp_path: Path) -> None:
    root = str(tmp_path)
    for rnd in range(8):
        tokens = _race(10, lambda i: acquire_lease(root, "d1", f"run{i}", ttl=60))
        winners = [t for t in tokens if t]
        assert len(winners) == 1, f"round {rnd}: {tokens}"
        assert acquire_lease(root, "d1", "late", ttl=60) is None
        release_lease(root, "d1", winners[0])
    assert acquire_lease(root, "d1", "after", ttl=60)
    assert len(_lease_files(tmp_path, "d1")) == 1  # older generations are pruned


def test_expired_lease_is_taken_over_by_exactly_one_claimant(tmp_path: Path) -> None:
    root = str(tmp_path)
    for rnd in range(6):
        old = acquire_lease(root, "d1", "crashed", ttl=0.05)
        assert old, f"round {rnd}"
        time.sleep(0.1)
        tokens = _race(10, lambda i: acquire_lease(root, "d1", f"next{i}", ttl=60))
        winners = [t for t in tokens if t]
        assert len(winners) == 1 and winners[0] != old, f"round {rnd}: {tokens}"
        release_lease(root, "d1", old)  # the crashed run coming back must not drop it
        assert not renew_lease(root, "d1", old, ttl=60)
        assert acquire_lease(root, "d1", "third", ttl=60) is None
        release_lease(root, "d1", winners[0])


def test_a_late_renewal_and_a_takeover_race_and_only_one_holds(tmp_path: Path) -> None:
    root = str(tmp_path)
    for rnd in range(6):
        token = acquire_lease(root, "d1", "slow", ttl=0.05)
        assert token
        time.sleep(0.1)  # expired: the holder renews as others take over

        def act(i: int, token: str = token) -> str | bool | None:
            if i == 0:
                return renew_lease(root, "d1", token, ttl=60)
            return acquire_lease(root, "d1", f"other{i}", ttl=60)

        outcomes = _race(6, act)
        holders = [o for o in outcomes if o]
        assert len(holders) == 1, f"round {rnd}: {outcomes}"
        release_lease(root, "d1", token)
        for o in outcomes[1:]:
            if isinstance(o, str):
                release_lease(root, "d1", o)
        assert acquire_lease(root, "d1", "free", ttl=60), "released by whoever held it"
        release_lease(root, "d1", _token_of(tmp_path, "d1"))


def _token_of(root: Path, name: str) -> str:
    import json

    newest = (root / "state" / "leases" / name / _lease_files(root, name)[-1]).read_text()
    return str(json.loads(newest)["token"])


def test_a_generation_freed_by_pruning_cannot_be_claimed_from_a_stale_read(tmp_path: Path) -> None:
    """A claimant that read generation g long ago creates g+1 after the holder renewed twice
    (g+1 pruned): the newer generation exists, so its claim fails."""
    from flows.state import _holder, _lease_dir, _next_generation

    root = str(tmp_path)
    token = acquire_lease(root, "d1", "holder", ttl=60)
    assert token
    lease = _lease_dir(root, "d1")
    stale_generation, _ = _holder(lease)
    assert renew_lease(root, "d1", token, ttl=60) and renew_lease(root, "d1", token, ttl=60)
    assert _lease_files(tmp_path, "d1") == [f"{stale_generation + 2:010d}.json"]
    claim = {"owner": "stale", "token": "t", "expires": time.time() + 60}
    assert not _next_generation(lease, stale_generation + 1, claim)
    assert _holder(lease)[1]["token"] == token  # type: ignore[index]


def test_the_run_lease_is_apart_from_drive_leases_and_renews(tmp_path: Path) -> None:
    root = str(tmp_path)
    run = acquire_lease(root, "nightly", "run-1", ttl=0.5, folder=RUN_LEASES)
    assert run is not None
    # a drive called "nightly" has its own lease, not the run's
    assert acquire_lease(root, "nightly", "run-1", ttl=60) is not None
    assert acquire_lease(root, "nightly", "run-2", ttl=60, folder=RUN_LEASES) is None
    assert renew_lease(root, "nightly", run, ttl=60, folder=RUN_LEASES)
    time.sleep(0.6)  # past the first ttl: renewal kept it
    assert acquire_lease(root, "nightly", "run-2", ttl=60, folder=RUN_LEASES) is None
    release_lease(root, "nightly", run, folder=RUN_LEASES)
    other = acquire_lease(root, "nightly", "run-2", ttl=60, folder=RUN_LEASES)
    assert other is not None and not renew_lease(root, "nightly", run, ttl=60, folder=RUN_LEASES)


def test_held_lease_is_renewed_past_its_ttl_while_slow_work_runs(tmp_path: Path) -> None:
    root = str(tmp_path)
    with held_lease(root, "d1", "worker", ttl=0.6) as lease:
        assert lease is not None
        for _ in range(6):  # 2.4 s of work: four times the ttl
            time.sleep(0.4)
            assert acquire_lease(root, "d1", "thief", ttl=60) is None
        lease.check()
    assert acquire_lease(root, "d1", "next", ttl=60), "released on exit"
    with held_lease(root, "d1", "third", ttl=60) as busy:
        assert busy is None


def test_a_lease_that_cannot_be_renewed_is_lost_and_check_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stops answering the holder's renewals: the lease expires, another run takes
    it over, and the holder's `check()` (before it would mark its work done) fails."""
    root = str(tmp_path)

    def unreachable(*args: Any, **kwargs: Any) -> bool:
        raise OSError("store unreachable")

    with held_lease(root, "d1", "holder", ttl=0.6) as lease:
        assert lease is not None
        monkeypatch.setattr("flows.state.renew_lease", unreachable)
        time.sleep(0.8)
        other = acquire_lease(root, "d1", "other", ttl=60)
        assert other, "the expired lease is taken over"
        with pytest.raises(LamflowError, match="lost the lease leases/d1"):
            lease.check()
        monkeypatch.undo()
    assert _token_of(tmp_path, "d1") == other, "the holder's exit left the new lease alone"


def test_a_lease_taken_over_is_reported_lost_by_the_renewal(tmp_path: Path) -> None:
    root = str(tmp_path)
    with held_lease(root, "d1", "holder", ttl=0.6) as lease:
        assert lease is not None
        lease.stop()  # a paused process: no renewals
        time.sleep(0.7)
        other = acquire_lease(root, "d1", "other", ttl=60)
        assert other
        assert not renew_lease(root, "d1", lease.token, ttl=60)
        with pytest.raises(LamflowError, match="not renewed before it expired"):
            lease.check()
    assert _token_of(tmp_path, "d1") == other


# --- on a real S3 server ---------------------------------------------------------------------


@pytest.mark.integration
def test_conditional_put_and_leases_on_seaweedfs(seaweed: Any) -> None:
    """SeaweedFS honours `If-None-Match: *` (412 for an existing key), so S3 claims are atomic:
    racing creators and racing lease claims (free and expired) have exactly one winner.

    SeaweedFS serialises conflicting conditional PUTs of one key: a loser's 412 comes after
    whole-second waits (up to n - 1 s for n claimants, measured), hence only 4 claimants.
    """
    root = "s3://lamflow-test/leases"
    for rnd in range(3):
        url = f"{root}/claims/{rnd}.json"
        won = _race(4, partial(_create_claim, url))
        assert won.count(True) == 1, won
        tokens = _race(4, lambda i: acquire_lease(root, "d1", f"run{i}", ttl=60))
        assert len([t for t in tokens if t]) == 1, tokens
        assert acquire_lease(root, "d1", "late", ttl=60) is None
        release_lease(root, "d1", next(t for t in tokens if t))
    old = acquire_lease(root, "d2", "crashed", ttl=0.05)
    assert old
    time.sleep(0.1)
    tokens = _race(4, lambda i: acquire_lease(root, "d2", f"next{i}", ttl=60))
    assert len([t for t in tokens if t]) == 1, tokens
    assert not renew_lease(root, "d2", old, ttl=60)
