"""Run state under ROOT/state: per-drop done markers, the watermark, and leases with expiry.

- `state/done/DRIVE.json`: the drop was labeled, checked and exported (written last).
- `state/watermark.json`: time and summary of the last successful nightly run.
- `state/leases/DRIVE/GENERATION.json`: who is labeling a drop now, until when.
- `state/run_leases/nightly/GENERATION.json`: which run owns ROOT's seed set, model and review
  loop (one nightly run at a time per ROOT).

A lease is a series of generations, each created with an atomic create-if-absent
(`create_exclusive`: a local exclusive create, or an S3 PUT with `If-None-Match: *`); the newest
generation says who holds it. Every change of hands, renewal and release creates the next
generation, so of two runs that act on the same generation exactly one succeeds, whatever the
timing. A lease left by a crashed run expires and is taken over; `held_lease` renews a lease in
the background while its work runs. Expiry compares wall clocks: the machines sharing ROOT must
agree on the time to well within the lease's ttl.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lam.errors import LamflowError
from lamflow.storage import create_exclusive, get_fs, join, safe_name, write_text_atomic
from lamflow.timestamps import utc_now
from tasks.model_pointer import publish_model, published_model

log = logging.getLogger(__name__)


# Other runs, possibly on other machines, write this state: it is always read afresh. s3fs keeps
# every listing it made for the life of the process and answers `exists` from it, so a
# long-lived process (`lamflow serve`, a Dask worker) would not see another run's writes.


def _fresh_names(url: str) -> list[str]:
    """Names directly under `url` from a new listing; empty if it does not exist."""
    fs, path = get_fs(url)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


def _read_json(url: str) -> dict[str, Any] | None:
    """The JSON object at `url` (one GET, no cached listing consulted); None if absent."""
    fs, path = get_fs(url)
    try:
        return dict(json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None


def done_drives(root: str) -> set[str]:
    """Drive ids already finished by an earlier run."""
    names = _fresh_names(join(root, "state", "done"))
    return {n[:-5] for n in names if n.endswith(".json")}


def read_done(root: str, drive: str) -> dict[str, Any]:
    """The done record of `drive` ({} if never finished): its summary, model version, times."""
    return _read_json(join(root, "state", "done", f"{safe_name(drive, 'drive id')}.json")) or {}


def mark_done(root: str, drive: str, summary: dict[str, Any]) -> None:
    """Record `drive` as finished; a relabeled drop keeps the time it was first finished
    (`first_finished_at`: the order `review.backfill: last N` counts drops in)."""
    first = read_done(root, drive).get("first_finished_at") or utc_now()
    url = join(root, "state", "done", f"{safe_name(drive, 'drive id')}.json")
    record = {"finished_at": utc_now(), "first_finished_at": first, **summary}
    write_text_atomic(url, json.dumps(record, default=str))


def note_done(root: str, drive: str, fields: dict[str, Any]) -> None:
    """Add `fields` to the done record of finished `drive`, its times unchanged (e.g. the
    version tag its labels were committed under). Runs under ROOT's run lease."""
    record = read_done(root, drive)
    if not record:
        raise LamflowError(f"drop {drive!r} is not finished: nothing to note")
    url = join(root, "state", "done", f"{safe_name(drive, 'drive id')}.json")
    write_text_atomic(url, json.dumps({**record, **fields}, default=str))


def drops_by_age(root: str) -> list[str]:
    """Finished drives, first finished first."""
    drives = done_drives(root)
    return sorted(drives, key=lambda d: (str(read_done(root, d).get("first_finished_at")), d))


def _accepted_url(root: str, drive: str) -> str:
    return join(root, "state", "accepted", f"{safe_name(drive, 'drive id')}.json")


def accept_drop(root: str, drive: str, by: str = "", note: str = "") -> dict[str, Any]:
    """A person accepts drop `drive` although its QC failed: the next run exports it and marks
    it done (`lamflow drop accept DRIVE`)."""
    record = {"drive": drive, "accepted_at": utc_now(), "by": by, "note": note}
    write_text_atomic(_accepted_url(root, drive), json.dumps(record))
    return record


def is_accepted(root: str, drive: str) -> bool:
    return _read_json(_accepted_url(root, drive)) is not None


def read_watermark(root: str) -> dict[str, Any]:
    return _read_json(join(root, "state", "watermark.json")) or {}


def write_watermark(root: str, drives: list[str], run: str) -> None:
    """Record a successful run: its time, id and the drops it finished."""
    data = {"last_success": utc_now(), "run": run, "drives": drives}
    write_text_atomic(join(root, "state", "watermark.json"), json.dumps(data))


def read_model_pointer(root: str) -> str:
    """Version of the model the last run labeled with ("" before the first run)."""
    return str(published_model(root).get("model_version", ""))


def write_model_pointer(root: str, model: dict[str, Any]) -> None:
    """Record the model this run labels with (its version, directory and seed count)."""
    publish_model(root, model)


RUN_LEASES = "run_leases"  # folder of run-wide leases (a drive id cannot collide with them)
_GENERATION = re.compile(r"^(\d{10})\.json$")


def _lease_dir(root: str, name: str, folder: str = "leases") -> str:
    """state/leases/NAME/ for a drive; run-wide leases live in their own folder
    (state/run_leases/), so no drive id can collide with them."""
    return join(root, "state", folder, safe_name(name, "lease name"))


def _generation_url(lease: str, generation: int) -> str:
    return join(lease, f"{generation:010d}.json")


def _generations(lease: str) -> list[int]:
    """The lease's generations, oldest first."""
    return [int(m.group(1)) for n in _fresh_names(lease) if (m := _GENERATION.match(n))]


def _holder(lease: str) -> tuple[int, dict[str, Any] | None]:
    """(newest generation, its record), or (0, None) for a lease never taken."""
    for _ in range(5):
        generations = _generations(lease)
        if not generations:
            return 0, None
        fs, path = get_fs(_generation_url(lease, generations[-1]))
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            continue  # pruned because a newer generation appeared since the listing
        try:
            return generations[-1], dict(json.loads(data))
        except json.JSONDecodeError:  # half-written (no-hard-link fallback): treat as expired
            return generations[-1], {}
    raise LamflowError(f"lease {lease} changed hands 5 times while being read: try again")


def _live(record: dict[str, Any] | None) -> bool:
    """Held by someone: neither released nor expired."""
    if not record or record.get("released"):
        return False
    return float(record.get("expires", 0)) > time.time()


def _next_generation(lease: str, generation: int, record: dict[str, Any]) -> bool:
    """Create `generation` holding `record`; True if it was created and is the newest.

    A claim made from a stale read can find its generation number free again (pruned); a newer
    generation then already exists, so the listing after the create shows it and the claim
    fails.
    """
    url = _generation_url(lease, generation)
    body = json.dumps({**record, "generation": generation}).encode()
    if not create_exclusive(url, body):
        return False
    generations = _generations(lease)
    if not generations or generations[-1] != generation:
        return False
    fs, _ = get_fs(lease)
    for old in generations:  # only the newest generation is ever read
        if old < generation:
            try:
                fs.rm(get_fs(_generation_url(lease, old))[1])
            except OSError as exc:  # left for a later prune
                log.debug("lease %s: generation %d not pruned: %s", lease, old, exc)
    return True


def acquire_lease(
    root: str, name: str, owner: str, ttl: float, folder: str = "leases"
) -> str | None:
    """Claim lease `name` for `ttl` seconds; returns the lease token, or None if held by another.

    `owner` is informational (a flow run id); the token distinguishes two claims by one owner.
    """
    lease = _lease_dir(root, name, folder)
    generation, current = _holder(lease)
    if _live(current):
        return None
    token = uuid.uuid4().hex
    claim = {"owner": owner, "token": token, "expires": time.time() + ttl, "since": utc_now()}
    return token if _next_generation(lease, generation + 1, claim) else None


def leased_by_another(root: str, name: str, owner: str, folder: str = "leases") -> bool:
    """Whether lease `name` is held (live) by an owner other than `owner`."""
    _, current = _holder(_lease_dir(root, name, folder))
    return current is not None and _live(current) and current.get("owner") != owner


def renew_lease(root: str, name: str, token: str, ttl: float, folder: str = "leases") -> bool:
    """Push a held lease's expiry `ttl` seconds ahead; False if it is no longer ours.

    The renewal is the next generation, so it races a takeover fairly: one of them wins.
    """
    lease = _lease_dir(root, name, folder)
    generation, current = _holder(lease)
    if not current or current.get("token") != token or current.get("released"):
        return False
    renewed = {**current, "expires": time.time() + ttl, "renewed": utc_now()}
    return _next_generation(lease, generation + 1, renewed)


def release_lease(root: str, name: str, token: str, folder: str = "leases") -> None:
    """Free the lease if it is still ours (an expired-and-taken-over lease is left alone)."""
    lease = _lease_dir(root, name, folder)
    generation, current = _holder(lease)
    if current and current.get("token") == token and not current.get("released"):
        released = {**current, "released": True, "expires": 0, "released_at": utc_now()}
        _next_generation(lease, generation + 1, released)


class HeldLease:
    """A lease held by this process, renewed every ttl/3 by a background thread."""

    def __init__(
        self, root: str, name: str, token: str, ttl: float, folder: str, since: float
    ) -> None:
        """`since`: a time (time.time()) taken before the claim, so the expiry this process
        knows of is never later than the stored one."""
        self.root, self.name, self.token, self.ttl, self.folder = root, name, token, ttl, folder
        self.expires = since + ttl
        self.lost_reason = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the lease itself is left as it is)."""
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            started = time.time()
            try:
                ours = renew_lease(self.root, self.name, self.token, self.ttl, self.folder)
            except Exception as exc:  # noqa: BLE001 - a store hiccup: retried until expiry
                log.warning("lease %s: renewal failed, retrying: %s", self.name, exc)
                if time.time() < self.expires:
                    continue
                self.lost_reason = f"it could not be renewed before it expired ({exc})"
            else:
                if ours:
                    self.expires = started + self.ttl
                    continue
                self.lost_reason = "it expired and another run took it over"
            log.error("lease %s lost: %s", self.name, self.lost_reason)
            return

    @property
    def lost(self) -> bool:
        return bool(self.lost_reason) or time.time() >= self.expires

    def check(self) -> None:
        """Raise LamflowError if the lease was lost (taken over, or not renewed in time)."""
        if self.lost:
            reason = self.lost_reason or "it was not renewed before it expired"
            raise LamflowError(
                f"lost the lease {self.folder}/{self.name} on {self.root}: {reason}; "
                "its work is not marked done (the run holding the lease now does it)"
            )


@contextmanager
def held_lease(
    root: str, name: str, owner: str, ttl: float, folder: str = "leases"
) -> Iterator[HeldLease | None]:
    """Lease `name` for the duration, renewed in the background every ttl/3 (so work longer
    than `ttl` keeps it); yields None when another holds it. Call `check()` before publishing
    the work: a lease lost meanwhile means another run may be doing the same work."""
    since = time.time()
    token = acquire_lease(root, name, owner, ttl, folder=folder)
    if token is None:
        yield None
        return
    held = HeldLease(root, name, token, ttl, folder, since)
    held.start()
    try:
        yield held
    finally:
        held.stop()
        try:
            release_lease(root, name, token, folder)
        except Exception as exc:  # noqa: BLE001 - the lease then simply expires
            log.warning("lease %s not released (it expires in %.0f s): %s", name, ttl, exc)
