"""Every dvc.yaml stage lists, in `deps`, every first-party module its command imports.

The modules are derived, not written down: a stage's command names its entry module
(`lamflow stage NAME` -> the module of `STAGES[NAME].target`), and `first_party_closure`
follows its imports through lam/, lamflow/, tasks/ and flows/ by parsing them (`import x`,
`from x import y`, relative imports, imports inside functions, and registry strings such as
"lam.prompts.sam:SamSegmenter", which are imported lazily). A dep folder covers every file
under it. A `lamflow ...` command also runs the command-line modules that dispatch it
(`DISPATCH`: the entry point, and cli/stages.py, whose table maps a stage's options and
defaults), so they are deps of every such stage: a changed default re-runs the stages.

`python -m tests.test_dvc_deps` prints, per stage, the smallest list of files and folders that
covers its modules (a folder when every module in it is needed): what dvc.yaml's code deps are.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lam", "lamflow", "tasks", "flows", "cli")
# What `lamflow ...` runs before the stage function. cli/main.py also imports the other command
# modules (runs, tools, demo) to register their parsers; no code of theirs runs for a stage.
DISPATCH = ("cli.main", "cli.stages")
# A string naming a module (and maybe an attribute), as backend registries hold them.
_DOTTED = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+(?::\w+)?$")
# Commands whose entry module is not a `lamflow stage` row: `lamflow drop add` calls
# tasks.ingest.add_drop (cli/stages.py:_drop_add).
_OTHER_COMMANDS = {("drop", "add"): "tasks.ingest"}


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of first-party module `name` (a.b -> a/b.py or a/b/__init__.py), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path, root: Path = REPO, on_load: bool = False) -> set[str]:
    """Dotted names module `path` may import (`from a import b` gives both a and a.b).

    on_load: only what loading the module imports (its module-level import statements), not
    the imports inside its functions nor the modules its registry strings name.
    """
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` imports never run
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    names: set[str] = set()
    for node in tree.body if on_load else ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
        elif not on_load and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _DOTTED.match(node.value):
                names.add(node.value.partition(":")[0])
    return names


@cache
def first_party_closure(module: str, root: Path = REPO) -> frozenset[Path]:
    """Files of `module` and of every first-party module it imports, transitively.

    Importing a.b.c runs a/__init__.py and a/b/__init__.py first, so those count too.
    """
    todo = [module]
    seen: set[Path] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]), root)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += sorted(imported_names(path, root))
    return frozenset(p.relative_to(root) for p in seen)


@cache
def stage_modules(cmd: str, root: Path = REPO) -> frozenset[Path]:
    """Files a dvc.yaml `cmd` runs: its entry module's closure, plus, for `lamflow ...`, the
    dispatching modules and what they import when loaded (not the stage table's target strings,
    which name every stage: only this stage's target runs)."""
    files = set(first_party_closure(stage_entry_module(cmd), root))
    if shlex.split(cmd)[0] == "lamflow":
        for name in DISPATCH:
            path = module_file(name, root)
            if path is None:
                raise ValueError(f"dispatch module {name} not found under {root}")
            files |= {path.relative_to(root), *first_party_closure(name.split(".")[0], root)}
            for imported in imported_names(path, root, on_load=True):
                files |= first_party_closure(imported, root)
    return frozenset(files)


def stage_entry_module(cmd: str) -> str:
    """The module whose code a dvc.yaml `cmd` runs (ValueError for a form not understood)."""
    words = shlex.split(cmd)
    if words[:2] == ["lamflow", "stage"] and len(words) > 2:
        from cli.stages import STAGES

        return STAGES[words[2]].target.partition(":")[0]
    if words[0] == "lamflow" and tuple(words[1:3]) in _OTHER_COMMANDS:
        return _OTHER_COMMANDS[(words[1], words[2])]
    if words[0] in ("python", "python3") and words[1:2] == ["-m"]:
        return words[2]
    raise ValueError(
        f"cannot tell which module `{cmd}` runs: use `lamflow stage NAME`, `python -m MODULE`, "
        "or add the command to tests/test_dvc_deps.py:_OTHER_COMMANDS"
    )


def _stages() -> dict[str, dict]:
    return dict(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def code_deps(stage: dict) -> list[str]:
    """The stage's deps inside the first-party packages (data deps are left out)."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return [d.rstrip("/") for d in deps if d.split("/")[0] in PACKAGES]


def covers(dep: str, path: Path) -> bool:
    """Whether dep (a file or folder, relative to the repo) is `path` or a folder above it."""
    return path == Path(dep) or Path(dep) in path.parents


def compact_deps(files: frozenset[Path], root: Path = REPO) -> list[str]:
    """Fewest files and folders covering `files`: a folder where every module in it is needed."""
    out: set[Path] = set()
    for f in files:
        best = f
        for folder in f.parents:
            if folder == Path("."):
                break
            if all(p.relative_to(root) in files for p in (root / folder).rglob("*.py")):
                best = folder
        out.add(best)
    return sorted(str(p) for p in out if not any(q in p.parents for q in out))


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_module_it_imports(name: str) -> None:
    stage = STAGES[name]
    needed = stage_modules(" ".join(stage["cmd"].split()))
    deps = code_deps(stage)
    missing = sorted(str(f) for f in needed if not any(covers(d, f) for d in deps))
    assert not missing, f"dvc.yaml stage {name}: deps lack {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist_and_are_imported(name: str) -> None:
    stage = STAGES[name]
    needed = stage_modules(" ".join(stage["cmd"].split()))
    for dep in code_deps(stage):
        assert (REPO / dep).exists(), f"dvc.yaml stage {name}: dep {dep} does not exist"
        assert any(covers(dep, f) for f in needed), (
            f"dvc.yaml stage {name}: dep {dep} is not imported by the stage (stale?)"
        )


def test_closure_follows_relative_lazy_and_registry_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "lam"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    import lam.lazy\n")
    (pkg / "lazy.py").write_text("REG = {'x': 'lam.backend:Backend'}\n")
    (pkg / "backend.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lam.typing_only\n"
    )
    (pkg / "typing_only.py").write_text("")
    (pkg / "unused.py").write_text("")
    got = first_party_closure("lam.sub", tmp_path)
    assert {str(p) for p in got} == {
        "lam/__init__.py",
        "lam/sub/__init__.py",
        "lam/sub/a.py",
        "lam/lazy.py",
        "lam/backend.py",
    }
    assert compact_deps(got, tmp_path) == [
        "lam/__init__.py",
        "lam/backend.py",
        "lam/lazy.py",
        "lam/sub",
    ]


def test_entry_module_of_each_command_form() -> None:
    assert stage_entry_module("lamflow stage train --out x") == "tasks.train"
    assert stage_entry_module("lamflow drop add src --drive d") == "tasks.ingest"
    assert stage_entry_module("python -m tasks.seed_set merge") == "tasks.seed_set"
    with pytest.raises(ValueError, match="cannot tell"):
        stage_entry_module("lamflow nightly")


def write_code_deps(path: Path = REPO / "dvc.yaml") -> None:
    """Replace every stage's code deps in dvc.yaml with the derived ones (comments kept).

    The derived list takes the place of the stage's first code dep; data deps stay as they are.
    """
    out: list[str] = []
    stage, done = "", set()
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        dep = line.removeprefix("      - ").strip() if line.startswith("      - ") else ""
        if stage in STAGES and dep.split("/")[0] in PACKAGES:
            if stage not in done:
                done.add(stage)
                files = stage_modules(" ".join(STAGES[stage]["cmd"].split()))
                out += [f"      - {d}\n" for d in compact_deps(files)]
            continue
        out.append(line)
    path.write_text("".join(out))


if __name__ == "__main__":  # print the derived code deps of every stage; --write: into dvc.yaml
    if "--write" in sys.argv:
        write_code_deps()
    for stage_name, spec in STAGES.items():
        print(f"{stage_name}:")
        for dep in compact_deps(stage_modules(" ".join(spec["cmd"].split()))):
            print(f"  - {dep}")
