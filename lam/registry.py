"""Lazy registries of pluggable backends (backbones, taggers, prompt segmenters, LLMs).

Modelled on fsspec's registry: a private table of dotted paths with a read-only public view.
Entries import only when asked for, so a missing optional dependency costs nothing until used
and then fails with an install hint; an unknown name fails listing the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class _Entry:
    target: str  # "package.module:attribute"
    install_hint: str = ""


class Registry:
    """Named backends of one kind, e.g. `Registry("backbone")`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}

    def register(
        self, name: str, target: str, install_hint: str = "", clobber: bool = False
    ) -> None:
        """Add `name` -> "module:attr"; refuses to overwrite an entry unless `clobber`."""
        if ":" not in target:
            raise ValueError(f"{self.kind} target must look like 'module:attr', got {target!r}")
        if name in self._entries and not clobber:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = _Entry(target, install_hint)

    @property
    def known(self) -> Mapping[str, str]:
        """Read-only view: name -> dotted target."""
        return MappingProxyType({k: v.target for k, v in self._entries.items()})

    def get(self, name: str) -> Any:
        """The registered object (class or factory) for `name`, imported now."""
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
            )
        module_name, attr = entry.target.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f" ({entry.install_hint})" if entry.install_hint else ""
            raise ImportError(
                f"{self.kind} {name!r} needs a missing dependency{hint}: {exc}"
            ) from exc
        return getattr(module, attr)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries))
