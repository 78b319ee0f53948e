"""The rolling history of the `qc` stage: one JSON line per drop that did not fail QC (drive,
model version, class histogram, time), so a drop is compared with the drops before it and not
only with the seeds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lamflow.storage import iter_lines, write_text_atomic
from lamflow.timestamps import utc_now


def read_history(url: str) -> list[dict[str, Any]]:
    """The history's entries, oldest first ([] when there is no file yet)."""
    entries = []
    for i, line in enumerate(iter_lines(url), 1):
        if line.strip():
            try:
                entries.append(dict(json.loads(line)))
            except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
                raise LamflowError(f"{url} line {i} is not a JSON object ({exc})") from exc
    return entries


def mean_histogram(entries: list[dict[str, Any]], names: list[str]) -> np.ndarray | None:
    """Mean of the entries' class histograms over `names` (each renormalised), or None."""
    rows = []
    for entry in entries:
        hist = entry.get("class_histogram") or {}
        vec = np.array([float(hist.get(n, 0.0)) for n in names])
        if vec.sum() > 0:
            rows.append(vec / vec.sum())
    return np.mean(rows, axis=0) if rows else None


def write_history(url: str, entries: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """Rewrite the history with this drop last and its earlier line (a re-run) dropped.

    Read-modify-write: one run at a time holds ROOT's run lease (flows/nightly.py run_lease).
    """
    kept = [e for e in entries if e.get("drive") != summary["drive"]]
    keys = ("drive", "model_version", "class_histogram")
    kept.append({**{k: summary[k] for k in keys}, "time": utc_now()})
    write_text_atomic(url, "".join(json.dumps(e) + "\n" for e in kept))
