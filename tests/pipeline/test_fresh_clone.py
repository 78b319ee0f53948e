"""`make data` on a fresh clone, as a new user runs it (slow): `git clone` of this repository
(plus the working tree's uncommitted changes, so the code under test is this checkout's), no
data/seeds and no DVC cache; the CamVid archive reachable through CAMVID=.

The clone reuses this test's venv (`make data BIN=... -o BIN/.installed`: the venv step is
taken as done), with the clone's code first on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CAMVID, REPO


def _run(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> tuple[int, str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return done.returncode, output


def _git_lines(*args: str) -> list[str]:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True, text=True)
    return [line for line in out.stdout.split("\0") if line]


@pytest.fixture()
def fresh_clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    for tool in ("git", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID}")
    repo = tmp_path / "clone"
    env = {**os.environ, "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    _run(["git", "clone", "-q", str(REPO), str(repo)], tmp_path, env)
    for name in _git_lines("ls-files", "-z", "--modified", "--others", "--exclude-standard"):
        if (REPO / name).is_file():  # uncommitted edits and new files of this checkout
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    for name in _git_lines("ls-files", "-z", "--deleted"):
        (repo / name).unlink(missing_ok=True)
    assert (repo / "data/seeds.dvc").is_file() and not (repo / "data/seeds").exists()
    assert not (repo / ".dvc/cache").exists()
    return repo, env


@pytest.mark.slow
def test_make_data_on_a_fresh_clone(fresh_clone: tuple[Path, dict[str, str]]) -> None:
    repo, env = fresh_clone
    bin_dir = Path(sys.executable).parent
    make = ["make", "data", f"BIN={bin_dir}", "-o", str(bin_dir / ".installed")]
    make.append(f"CAMVID={CAMVID}")
    _, output = _run(make, repo, env)
    assert '"restored_from": "import", "verified": true, "committed": true' in output
    _run(["git", "diff", "--exit-code", "data/seeds.dvc"], repo, env)  # verified, not re-recorded
    assert "up to date" in _run(["dvc", "status", "data/seeds.dvc"], repo, env)[1]
    assert len(list((repo / "data/seeds/images").iterdir())) == 6

    _, again = _run(make, repo, env)  # nothing to do the second time
    assert '"restored_from": "workspace"' in again

    shutil.rmtree(repo / "data/seeds")  # now DVC's cache has it
    assert '"restored_from": "cache"' in _run(make, repo, env)[1]

    label = next((repo / "data/seeds/labels").iterdir())  # a seed edited, not yet recorded
    label.write_bytes(label.read_bytes() + b"\0")
    code, edited = _run(make, repo, env, ok=False)
    assert code != 0 and "make data: data/seeds differs from data/seeds.dvc" in edited
    assert "modified" in edited
