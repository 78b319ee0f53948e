"""Stage `restore_seeds` (tasks/restore_seeds.py) in a small DVC repository: a fresh clone's
seeds come back from the archive, verified against the `.dvc` file, and land in the cache; the
cache and a remote are used first; other bytes are refused and never recorded."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from lam.errors import LamflowError
from tasks.restore_seeds import restore_seeds
from tasks.seed_bootstrap import import_seeds
from tests.pipeline.helpers import write_seed_set

STEMS = ["seed_00", "seed_01"]


def _dvc(repo: Path) -> Any:
    """The repository's dvc Repo (dvc is imported lazily, as the stage does)."""
    from dvc.repo import Repo

    return Repo(str(repo))


@pytest.fixture()
def clone(tmp_path: Path) -> dict[str, Path]:
    """A DVC repo whose data/seeds.dvc records seeds imported from a synthetic archive, then
    made a fresh clone: the folder and DVC's cache are gone, the .dvc file stays."""
    from dvc.repo import Repo

    archive = write_seed_set(tmp_path / "archive")
    repo = tmp_path / "repo"
    repo.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        Repo.init(str(repo), no_scm=True).close()
    seeds = repo / "data" / "seeds"
    import_seeds(*_sources(archive)[:2], STEMS, str(seeds), _sources(archive)[2], "camvid")
    with _dvc(repo) as dvc, contextlib.redirect_stdout(io.StringIO()):
        dvc.add(str(seeds))
    shutil.rmtree(seeds)
    shutil.rmtree(repo / ".dvc" / "cache")
    return {"repo": repo, "archive": archive, "seeds": seeds, "record": repo / "data/seeds.dvc"}


def _sources(archive: Path) -> tuple[str, str, str]:
    return str(archive / "images"), str(archive / "labels"), str(archive / "classes.json")


def _restore(clone: dict[str, Path], **kwargs: str) -> dict:
    images, labels, classes = _sources(clone["archive"])
    return restore_seeds(str(clone["record"]), images, labels, STEMS, classes, **kwargs)


def _status(repo: Path) -> dict:
    with _dvc(repo) as dvc:
        return dvc.status(targets=[str(repo / "data/seeds.dvc")])


def test_a_fresh_clone_gets_the_recorded_seeds_into_the_cache(clone: dict[str, Path]) -> None:
    record = clone["record"].read_bytes()
    assert _status(clone["repo"])  # the folder is missing
    report = clone["repo"] / "outputs/restore_seeds.json"
    result = _restore(clone, report=str(report))
    md5 = yaml.safe_load(record)["outs"][0]["md5"]
    assert result["restored_from"] == "import" and result["md5"] == md5
    assert result["verified"] and result["committed"]
    assert _status(clone["repo"]) == {}  # `dvc status` is clean: not "not in cache"
    assert clone["record"].read_bytes() == record  # verified, not re-recorded
    written = json.loads(report.read_text())
    assert written == {"dvc_file": str(clone["record"]), "path": "data/seeds", "md5": md5,
                       "nfiles": 7}  # fmt: skip

    again = _restore(clone)  # the folder is there now: nothing to do
    assert again["restored_from"] == "workspace" and not again["committed"] and again["verified"]

    shutil.rmtree(clone["seeds"])  # and DVC's cache holds it
    assert _restore(clone)["restored_from"] == "cache"
    assert _status(clone["repo"]) == {}


def test_seeds_come_from_the_remote_before_the_archive(
    clone: dict[str, Path], tmp_path: Path
) -> None:
    _restore(clone)
    with _dvc(clone["repo"]) as dvc:
        with dvc.config.edit() as conf:
            conf["remote"]["store"] = {"url": str(tmp_path / "store")}
            conf["core"]["remote"] = "store"
    with _dvc(clone["repo"]) as dvc, contextlib.redirect_stdout(io.StringIO()):
        dvc.push(targets=[str(clone["record"])])
    shutil.rmtree(clone["seeds"])
    shutil.rmtree(clone["repo"] / ".dvc" / "cache")
    shutil.rmtree(clone["archive"] / "images")  # so an import could not succeed
    assert _restore(clone)["restored_from"] == "remote"
    assert _status(clone["repo"]) == {}


def test_an_import_with_other_bytes_fails_and_is_not_kept(clone: dict[str, Path]) -> None:
    record = clone["record"].read_bytes()
    label = clone["archive"] / "labels/seed_01.png"
    pixels = np.array(Image.open(label))
    pixels[:2, :2] = 2 if pixels[0, 0] != 2 else 0  # the archive changed since the record
    Image.fromarray(pixels).save(label)
    with pytest.raises(LamflowError, match="have md5 .* but .*seeds.dvc records"):
        _restore(clone)
    assert not clone["seeds"].exists()  # nothing a later `dvc repro` could record
    assert clone["record"].read_bytes() == record
    assert not (clone["repo"] / ".dvc/cache").exists() or not any(
        p.is_file() for p in (clone["repo"] / ".dvc/cache").rglob("*")
    )


def test_seeds_edited_by_hand_are_left_for_dvc_to_record(
    clone: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _restore(clone)
    label = clone["seeds"] / "labels/seed_00.png"
    pixels = np.array(Image.open(label))
    pixels[:2, :2] = 2 if pixels[0, 0] != 2 else 0
    Image.fromarray(pixels).save(label)
    edited = label.read_bytes()
    with caplog.at_level(logging.WARNING, logger="tasks.restore_seeds"):
        result = _restore(clone)
    assert result["restored_from"] == "workspace"
    assert not result["verified"] and not result["committed"]
    assert "differs from" in caplog.text and "`dvc repro` records the edit" in caplog.text
    assert label.read_bytes() == edited  # not overwritten
    assert "modified" in json.dumps(_status(clone["repo"]))


def test_a_missing_dvc_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such .dvc file: .*nope.dvc"):
        restore_seeds(str(tmp_path / "nope.dvc"), "i", "l", STEMS, "c")
