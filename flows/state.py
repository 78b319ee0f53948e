"""Run state under ROOT/state: per-drop done markers, the watermark, and leases with expiry.

- `state/done/DRIVE.json`: the drop was labeled, checked and exported (written last).
- `state/watermark.json`: time and summary of the last successful nightly run.
- `state/leases/DRIVE.json`: who is labeling a drop now, until when.
- `state/run_leases/nightly.json`: which run owns ROOT's seed set, model and review loop
  (one nightly run at a time per ROOT), renewed between steps.

Leases work on any fsspec store, S3 included (no conditional writes needed): a claimant writes
its token, waits `settle` seconds, and reads back; only the last writer sees its own token, so
of two runs started at once exactly one proceeds. An expired lease (crashed run) is taken over.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from lamflow.storage import exists, get_fs, join, list_dir, read_bytes, safe_name, write_text_atomic


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def done_drives(root: str) -> set[str]:
    """Drive ids already finished by an earlier run."""
    return {n[:-5] for n in list_dir(join(root, "state", "done")) if n.endswith(".json")}


def read_done(root: str, drive: str) -> dict[str, Any]:
    """The done record of `drive` ({} if never finished): its summary, model version, times."""
    url = join(root, "state", "done", f"{safe_name(drive, 'drive id')}.json")
    return dict(json.loads(read_bytes(url))) if exists(url) else {}


def mark_done(root: str, drive: str, summary: dict[str, Any]) -> None:
    """Record `drive` as finished; a relabeled drop keeps the time it was first finished
    (`first_finished_at`: the order `review.backfill: last N` counts drops in)."""
    first = read_done(root, drive).get("first_finished_at") or _now()
    url = join(root, "state", "done", f"{safe_name(drive, 'drive id')}.json")
    record = {"finished_at": _now(), "first_finished_at": first, **summary}
    write_text_atomic(url, json.dumps(record, default=str))


def drops_by_age(root: str) -> list[str]:
    """Finished drives, first finished first."""
    drives = done_drives(root)
    return sorted(drives, key=lambda d: (str(read_done(root, d).get("first_finished_at")), d))


def _accepted_url(root: str, drive: str) -> str:
    return join(root, "state", "accepted", f"{safe_name(drive, 'drive id')}.json")


def accept_drop(root: str, drive: str, by: str = "", note: str = "") -> dict[str, Any]:
    """A person accepts drop `drive` although its QC failed: the next run exports it and marks
    it done (`lamflow drop accept DRIVE`)."""
    record = {"drive": drive, "accepted_at": _now(), "by": by, "note": note}
    write_text_atomic(_accepted_url(root, drive), json.dumps(record))
    return record


def is_accepted(root: str, drive: str) -> bool:
    return exists(_accepted_url(root, drive))


def read_watermark(root: str) -> dict[str, Any]:
    url = join(root, "state", "watermark.json")
    return dict(json.loads(read_bytes(url))) if exists(url) else {}


def write_watermark(root: str, drives: list[str], run: str) -> None:
    """Record a successful run: its time, id and the drops it finished."""
    data = {"last_success": _now(), "run": run, "drives": drives}
    write_text_atomic(join(root, "state", "watermark.json"), json.dumps(data))


def read_model_pointer(root: str) -> str:
    """Version of the model the last run labeled with ("" before the first run)."""
    url = join(root, "state", "model.json")
    return str(json.loads(read_bytes(url)).get("model_version", "")) if exists(url) else ""


def write_model_pointer(root: str, model: dict[str, Any]) -> None:
    """Record the model this run labels with (its version, directory and seed count)."""
    keys = ("model_version", "model", "seeds", "trained")
    data = {"since": _now(), **{k: model.get(k) for k in keys}}
    write_text_atomic(join(root, "state", "model.json"), json.dumps(data))


RUN_LEASES = "run_leases"  # folder of run-wide leases (a drive id cannot collide with them)


def _lease_url(root: str, name: str, folder: str = "leases") -> str:
    """state/leases/NAME.json for a drive; run-wide leases live in their own folder
    (state/run_leases/), so no drive id can collide with them."""
    return join(root, "state", folder, f"{safe_name(name, 'lease name')}.json")


def _read_lease(url: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(read_bytes(url)))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def acquire_lease(
    root: str, name: str, owner: str, ttl: float, settle: float = 0.5, folder: str = "leases"
) -> str | None:
    """Claim lease `name` for `ttl` seconds; returns the lease token, or None if held by another.

    `owner` is informational (a flow run id); the token distinguishes two claims by one owner.
    """
    url = _lease_url(root, name, folder)
    current = _read_lease(url)
    if current and current.get("expires", 0) > time.time():
        return None
    token = uuid.uuid4().hex
    claim = {"owner": owner, "token": token, "expires": time.time() + ttl, "since": _now()}
    write_text_atomic(url, json.dumps(claim))
    time.sleep(settle)
    winner = _read_lease(url)
    return token if winner and winner.get("token") == token else None


def renew_lease(root: str, name: str, token: str, ttl: float, folder: str = "leases") -> bool:
    """Push a held lease's expiry `ttl` seconds ahead; False if it is no longer ours.

    Long runs renew between steps, so a run that outlives `ttl` keeps its lease.
    """
    url = _lease_url(root, name, folder)
    current = _read_lease(url)
    if not current or current.get("token") != token:
        return False
    write_text_atomic(url, json.dumps({**current, "expires": time.time() + ttl}))
    return True


def release_lease(root: str, name: str, token: str, folder: str = "leases") -> None:
    """Drop the lease if it is still ours (an expired-and-taken-over lease is left alone)."""
    url = _lease_url(root, name, folder)
    current = _read_lease(url)
    if current and current.get("token") == token:
        fs, path = get_fs(url)
        fs.rm(path)
