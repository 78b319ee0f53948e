"""The lazy backend registry: unknown names list the known ones; missing deps give a hint."""

import sys

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


def test_a_required_module_is_checked_before_the_backend_is_built(monkeypatch):
    """The backend's module imports fine (its heavy import sits in the constructor): the
    missing package is still named, with the hint, when the backend is asked for."""
    from lam.registry import MissingDependencyError

    reg = Registry("widget")
    reg.register("x", "json:dumps", "pip install xyz", requires=["no_such_module_xyz"])
    with pytest.raises(MissingDependencyError, match=r"widget 'x' .*\(pip install xyz\)"):
        reg.get("x")
    reg.register("y", "json:dumps", "pip install json-ish", requires=["json"])
    assert reg.get("y").__name__ == "dumps"
    monkeypatch.setitem(sys.modules, "json", None)  # an import of json now fails
    with pytest.raises(ImportError, match=r"\(pip install json-ish\): no module named 'json'"):
        reg.get("y")
    with pytest.raises(ValueError, match="list of module names"):
        reg.register("z", "json:dumps", requires="json")


def _registries():
    from lam.build import BACKBONES
    from lam.prompts import SEGMENTERS
    from lam.vocabulary.backends import LLMS, TAGGERS
    from lam.zero_shot import ZERO_SHOT

    return [BACKBONES, SEGMENTERS, TAGGERS, LLMS, ZERO_SHOT]


@pytest.mark.parametrize(
    "kind,name",
    [(r.kind, n) for r in _registries() for n in r if r.requirements(n)],
)
def test_every_backend_names_its_missing_package_with_the_install_hint(kind, name, monkeypatch):
    (registry,) = [r for r in _registries() if r.kind == kind]
    required = registry.requirements(name)[0]
    monkeypatch.setitem(sys.modules, required, None)  # really absent: its import fails
    with pytest.raises(ImportError) as info:
        registry.get(name)
    assert f"({registry.install_hint(name)})" in str(info.value)
    assert repr(required) in str(info.value)
