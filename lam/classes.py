"""The class list a model labels: ids, names, display colours and the ignore (void) id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lam.errors import LamflowError

_DEFAULT_COLOURS = np.array(
    [[(i * 67) % 256, (i * 131 + 50) % 256, (i * 199 + 100) % 256] for i in range(256)],
    dtype=np.uint8,
)


@dataclass(frozen=True)
class ClassList:
    """C named classes with contiguous ids 0..C-1, plus an id outside them for void.

    Contiguous ids keep the adapter's output channel k == class id k, so label PNGs can be
    written straight from an argmax.
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if not self.names:
            raise LamflowError("class list is empty: at least one class is needed")
        if len(set(self.names)) != len(self.names):
            raise LamflowError(f"class names are not unique: {list(self.names)}")
        if 0 <= self.ignore_index < len(self.names):
            raise LamflowError(
                f"ignore_index {self.ignore_index} collides with class "
                f"'{self.names[self.ignore_index]}'"
            )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_json(cls, data: dict[str, Any] | list[Any]) -> ClassList:
        """Parse `{"ignore_index": 11, "classes": [{"id", "name", "color"}, ...]}` or a bare list.

        Raises LamflowError naming the entry that is malformed or the id that is missing.
        """
        entries = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(entries, list) or not entries:
            raise LamflowError("classes file needs a non-empty 'classes' list")
        by_id: dict[int, tuple[str, tuple[int, int, int]]] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "name" not in entry:
                raise LamflowError(
                    f"classes[{i}] must be an object with at least 'name': {entry!r}"
                )
            cid = int(entry.get("id", i))
            color = entry.get("color") or _DEFAULT_COLOURS[cid % 256].tolist()
            if len(color) != 3:
                raise LamflowError(f"classes[{i}].color must be [r, g, b], got {color!r}")
            if cid in by_id:
                raise LamflowError(f"class id {cid} appears twice in the classes file")
            by_id[cid] = (str(entry["name"]), (int(color[0]), int(color[1]), int(color[2])))
        ids = sorted(by_id)
        if ids != list(range(len(ids))):
            raise LamflowError(f"class ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        ignore = data.get("ignore_index", 255) if isinstance(data, dict) else 255
        return cls(
            names=tuple(by_id[i][0] for i in ids),
            colors=tuple(by_id[i][1] for i in ids),
            ignore_index=int(ignore),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ignore_index": self.ignore_index,
            "classes": [
                {"id": i, "name": n, "color": list(c)}
                for i, (n, c) in enumerate(zip(self.names, self.colors))
            ],
        }

    def check_label(self, label: np.ndarray, where: str = "label") -> None:
        """Raise if `label` ((H, W) ints) holds ids that are neither a class nor the ignore id."""
        values = np.unique(label)
        bad = [int(v) for v in values if not (0 <= v < self.num_classes or v == self.ignore_index)]
        if bad:
            raise LamflowError(
                f"{where} has class ids {bad} outside 0..{self.num_classes - 1} "
                f"(ignore id {self.ignore_index})"
            )

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class id -> RGB; void and unknown ids are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.array(self.colors, dtype=np.uint8)
        return lut
