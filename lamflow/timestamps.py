"""One way to write the time into a record."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (provenance, state and history records)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
