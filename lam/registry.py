"""Lazy registries of pluggable backends (backbones, taggers, prompt segmenters, LLMs).

Modelled on fsspec's registry: a private table of dotted paths with a read-only public view.
Entries import only when asked for, so a missing optional dependency costs nothing until used
and then fails with an install hint; an unknown name fails listing the known ones.

A backend imports its heavy optional packages inside its constructor (so that registering and
listing backends stays cheap); an import error raised there would carry no hint. Each entry
therefore names the modules it `requires`, and `get` checks they can be found (without
importing them) before it hands the backend out.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class MissingDependencyError(ImportError):
    """An optional package a backend needs is not installed; the message has the install hint.

    An ImportError, so code catching ImportError keeps working; the CLI prints it as one line.
    """


@dataclass(frozen=True)
class _Entry:
    target: str  # "package.module:attribute"
    install_hint: str = ""
    requires: tuple[str, ...] = ()  # importable module names, e.g. ("segment_anything",)


def module_available(name: str) -> bool:
    """True if module `name` (dotted) can be imported, checked without importing it.

    A module already imported counts as there (even one without a spec, as test doubles are);
    one blocked with `sys.modules[name] = None` counts as missing, as an import would fail.
    """
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing or blocked parent package
        return False


def require(what: str, modules: Sequence[str], install_hint: str = "") -> None:
    """MissingDependencyError naming `what` and `install_hint` unless every module in `modules`
    can be imported: for an optional package only one configuration of a backend needs (a
    registry entry's `requires` covers what every configuration needs)."""
    missing = [m for m in modules if not module_available(m)]
    if missing:
        hint = f" ({install_hint})" if install_hint else ""
        raise MissingDependencyError(
            f"{what} needs a missing dependency{hint}: no module named {missing[0]!r}"
        )


class Registry:
    """Named backends of one kind, e.g. `Registry("backbone")`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}

    def register(
        self,
        name: str,
        target: str,
        install_hint: str = "",
        clobber: bool = False,
        *,
        requires: Sequence[str] = (),
    ) -> None:
        """Add `name` -> "module:attr"; refuses to overwrite an entry unless `clobber`.

        `requires` names the optional modules the backend imports when it is built (checked
        by `get`, which fails with `install_hint` when one is missing).
        """
        if ":" not in target:
            raise ValueError(f"{self.kind} target must look like 'module:attr', got {target!r}")
        if name in self._entries and not clobber:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if isinstance(requires, str):
            raise ValueError(f"{self.kind} {name!r}: requires must be a list of module names")
        self._entries[name] = _Entry(target, install_hint, tuple(requires))

    @property
    def known(self) -> Mapping[str, str]:
        """Read-only view: name -> dotted target."""
        return MappingProxyType({k: v.target for k, v in self._entries.items()})

    def requirements(self, name: str) -> tuple[str, ...]:
        """Modules backend `name` needs beyond its own module (ValueError if unknown)."""
        return self._entry(name).requires

    def install_hint(self, name: str) -> str:
        """How to install what backend `name` needs ("" if nothing optional)."""
        return self._entry(name).install_hint

    def get(self, name: str) -> Any:
        """The registered object (class or factory) for `name`, imported now.

        Raises ValueError listing the known names for an unknown `name`, and
        MissingDependencyError (an ImportError) with the install hint when the backend's
        module or one of the modules it `requires` is not installed.
        """
        entry = self._entry(name)
        what = f"{self.kind} {name!r}"
        require(what, entry.requires, entry.install_hint)
        module_name, attr = entry.target.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f" ({entry.install_hint})" if entry.install_hint else ""
            raise MissingDependencyError(f"{what} needs a missing dependency{hint}: {exc}") from exc
        return getattr(module, attr)

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
            )
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
