"""The lazy backend registry: unknown names list the known ones; missing deps give a hint."""

import pytest

from lam.registry import Registry


def test_unknown_name_lists_known():
    reg = Registry("widget")
    reg.register("a", "json:dumps")
    with pytest.raises(ValueError, match="unknown widget 'b'; known: a"):
        reg.get("b")
    assert reg.get("a").__name__ == "dumps"
    assert dict(reg.known) == {"a": "json:dumps"}


def test_missing_dependency_gives_install_hint():
    reg = Registry("widget")
    reg.register("x", "no_such_module_xyz:thing", "pip install xyz")
    with pytest.raises(ImportError, match="pip install xyz"):
        reg.get("x")


def test_duplicate_and_malformed_registration_refused():
    reg = Registry("widget")
    reg.register("a", "json:dumps")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "json:loads")
    with pytest.raises(ValueError, match="module:attr"):
        reg.register("c", "json.dumps")
