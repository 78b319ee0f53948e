"""The nightly flow versions what it makes: after two runs with a seed-set change between them,
the first run's model and labels come back from the DVC remote, byte for byte, by its tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.nightly import dask_runner, nightly, shared_prefect_api
from tasks.frame_sources import load_classes
from tasks.seed_set import add_seed
from tasks.version import lineage, list_versions, restore
from tests.pipeline.helpers import png_bytes, write_drop, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(params: Path) -> dict[str, Any]:
    with shared_prefect_api():
        return nightly.with_options(task_runner=dask_runner("", workers=1))(params_file=str(params))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_first_run_is_restored_byte_for_byte_after_a_seed_set_change(
    prefect_harness: None, tmp_path: Path, seed_set: Path
) -> None:
    root = tmp_path / "root"
    params = write_params(
        tmp_path / "params.yaml",
        str(root),
        seed_set,
        pipeline={"vocabulary_per_drop": True},
        vocabulary={"max_frames": 2, "views": "full"},
        versioning={"enabled": True},
    )
    write_drop(str(root), "d1", 3)
    first = _run(params)
    tag = first["versions"]["tag"]
    model_files = _files(Path(first["model"]))
    label_files = _files(Path(first["drops"]["d1"]["labels"]))
    assert (root / "drops/d1/vocabulary.yaml").exists()

    # a reviewer's seed arrives: the next run retrains, relabels d1 and labels d2
    classes = load_classes(str(seed_set / "classes.json"))
    label = np.ones((64, 96), dtype=np.uint8)  # all road
    add_seed(str(root / "seeds"), "new_seed", png_bytes(7), "png", label, classes, {"source": "t"})
    write_drop(str(root), "d2", 2, start=10)
    second = _run(params)
    assert second["trained"] and second["model_version"] != first["model_version"]
    assert sorted(second["versions"]["drops"]) == ["d1", "d2"]

    workspace = first["versions"]["workspace"]
    assert [v["tag"] for v in list_versions(workspace)][:2] == [second["versions"]["tag"], tag]
    then = lineage(workspace, tag, "d1")
    now = lineage(workspace, second["versions"]["tag"], "d1")
    assert then["model_version"] == first["model_version"]
    assert now["model_version"] == second["model_version"]
    assert then["seeds_md5"] != now["seeds_md5"], "the seed set that trained each model differs"
    assert then["vocabulary"] == "vocabulary/d1.yaml"

    restore(workspace, tag, then["model"], str(tmp_path / "restored/model"))
    restore(workspace, tag, then["labels"], str(tmp_path / "restored/labels"))
    assert _files(tmp_path / "restored/model") == model_files
    assert _files(tmp_path / "restored/labels") == label_files


def test_drops_a_failed_version_step_left_behind_are_versioned_by_the_next_run(
    prefect_harness: None, tmp_path: Path, seed_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.nightly
    from flows.state import read_done
    from lam.errors import LamflowError

    root = tmp_path / "root"
    params = write_params(
        tmp_path / "params.yaml", str(root), seed_set, versioning={"enabled": True}
    )
    write_drop(str(root), "d1", 2)

    def remote_down(*args: Any, **kwargs: Any) -> None:
        raise LamflowError("the DVC remote is unreachable")

    monkeypatch.setattr(flows.nightly, "version_task", remote_down)
    with pytest.raises(LamflowError, match="unreachable"):
        _run(params)
    done = read_done(str(root), "d1")
    assert done and "version_tag" not in done  # labeled and published, not versioned
    monkeypatch.undo()

    again = _run(params)  # no new drop, same model: the version step catches d1 up
    assert again["drops"] == {} and again["versions"]["drops"] == ["d1"]
    assert read_done(str(root), "d1")["version_tag"] == again["versions"]["tag"]
    assert lineage(again["versions"]["workspace"], again["versions"]["tag"], "d1")["labels"]
