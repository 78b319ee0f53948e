"""Picking a spread-out subset of an ordered list (frames of a drive are in time order)."""

from __future__ import annotations

from typing import Any

import numpy as np


def evenly_spaced(items: list[Any], max_items: int) -> list[Any]:
    """At most `max_items` of `items`, evenly spaced over the whole list (all when 0):
    a drop's frames are in time order, so this spreads a subsample over the whole drive."""
    if max_items <= 0 or len(items) <= max_items:
        return list(items)
    idx = np.linspace(0, len(items) - 1, max_items).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]
