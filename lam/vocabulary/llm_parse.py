"""Defensive parsing of LLM answers: anything that does not fit returns None, never raises.

Small local models wrap JSON in prose or code fences, invent labels, or stop mid-object;
the caller then keeps the embedding result and logs a warning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any | None:
    """The first JSON object in `text` (inside a code fence or bare), or None."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        start = chunk.find("{")
        while start != -1:
            try:
                value, _ = json.JSONDecoder().raw_decode(chunk[start:])
                return value
            except json.JSONDecodeError:
                start = chunk.find("{", start + 1)
    return None


@dataclass(frozen=True)
class LabelGroup:
    """One LLM-proposed group: canonical `name`, `members` (labels given), `parent` or ''."""

    name: str
    members: tuple[str, ...]
    parent: str = ""


def parse_groups(text: str, labels: Sequence[str]) -> list[LabelGroup] | None:
    """Groups from a grouping answer, or None if malformed.

    Valid means: a {"groups": [...]} object whose groups have a non-empty string `name` and
    a non-empty list `members` of given labels (case-insensitive), no label in two groups.
    Labels the answer forgot become singleton groups (with no parent) rather than failing.
    """
    data = extract_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        return None
    known = {label.lower(): label for label in labels}
    seen: set[str] = set()
    groups = []
    for item in data["groups"]:
        if not isinstance(item, dict):
            return None
        name, members, parent = item.get("name"), item.get("members"), item.get("parent", "")
        if not isinstance(name, str) or not name.strip() or not isinstance(members, list):
            return None
        if not isinstance(parent, str):
            parent = ""
        resolved = []
        for m in members:
            if not isinstance(m, str) or m.lower() not in known or known[m.lower()] in seen:
                return None
            seen.add(known[m.lower()])
            resolved.append(known[m.lower()])
        if not resolved:
            return None
        groups.append(LabelGroup(name.strip().lower(), tuple(resolved), parent.strip().lower()))
    groups += [LabelGroup(label, (label,)) for label in labels if label not in seen]
    return groups


def parse_mapping(
    text: str, synsets: Sequence[str], targets: Sequence[str], unmapped: str
) -> dict[str, str] | None:
    """{synset: target or `unmapped`} from a mapping answer, or None if malformed.

    Keys that are not given synsets are ignored; a value that is not a target class (or
    `unmapped`) makes the whole answer invalid, since the model misunderstood the task.
    """
    data = extract_json(text)
    if not isinstance(data, dict):
        return None
    syn = {s.lower(): s for s in synsets}
    tgt = {t.lower(): t for t in [*targets, unmapped]}
    out = {}
    for key, value in data.items():
        if not isinstance(key, str) or key.lower() not in syn:
            continue
        if not isinstance(value, str) or value.strip().lower() not in tgt:
            return None
        out[syn[key.lower()]] = tgt[value.strip().lower()]
    return out or None
