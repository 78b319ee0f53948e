"""The `version` stage: a run's seed set, model and labels go to the DVC remote, one git tag per
run, and any run's files come back byte for byte, on a local ROOT and on SeaweedFS S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lam.errors import LamflowError
from lamflow.params import VersioningParams
from lamflow.storage import get_fs, write_bytes_atomic
from tasks.version import lineage, list_versions, restore, version


def _write_tree(root: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        write_bytes_atomic(f"{root}/{rel}", data)


def _snapshot(url: str) -> dict[str, bytes]:
    fs, path = get_fs(url)
    fs.invalidate_cache()
    return {p[len(path) + 1 :]: fs.cat_file(p) for p in fs.find(path)}


def _local(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _two_runs(root: str, params: VersioningParams) -> tuple[dict[str, Any], dict[str, bytes], ...]:
    """Run 1 (model v1, seeds A, labels L1), then a seed-set change and run 2 (v2, B, L2)."""
    _write_tree(
        root,
        {
            "seeds/images/s1.png": b"frame-1",
            "seeds/labels/s1.png": b"label-1",
            "models/v1/config.json": b'{"version": "v1"}',
            "models/v1/head.safetensors": b"weights-1",
            "labels/v1/d1/labels/f1.png": b"pred-1-f1",
            "labels/v1/d1/labels/f2.png": b"pred-1-f2",
            "labels/v1/d1/manifest.jsonl": b'{"stem": "f1"}\n',
            "drops/d1/vocabulary.yaml": b"synsets: [road]\n",
        },
    )
    first_model = _snapshot(f"{root}/models/v1")
    first_labels = _snapshot(f"{root}/labels/v1/d1")
    drops = {
        "d1": {"labels": f"{root}/labels/v1/d1", "vocabulary": f"{root}/drops/d1/vocabulary.yaml"}
    }
    one = version(root, "run1", f"{root}/models/v1", "v1", f"{root}/seeds", drops, params)
    # a reviewer adds a seed; the model retrains and relabels the drop
    _write_tree(
        root,
        {
            "seeds/images/s2.png": b"frame-2",
            "seeds/labels/s2.png": b"label-2",
            "models/v2/config.json": b'{"version": "v2"}',
            "models/v2/head.safetensors": b"weights-2",
            "labels/v2/d1/labels/f1.png": b"pred-2-f1",
            "labels/v2/d1/labels/f2.png": b"pred-2-f2",
        },
    )
    drops = {"d1": {"labels": f"{root}/labels/v2/d1", "vocabulary": ""}}
    two = version(root, "run2", f"{root}/models/v2", "v2", f"{root}/seeds", drops, params)
    return one, two, first_model, first_labels


def _check_restores_run_one(
    tmp_path: Path, one: dict, two: dict, first_model: dict, first_labels: dict
) -> None:
    ws = one["workspace"]
    assert [v["tag"] for v in list_versions(ws)] == ["run-run2", "run-run1"]
    assert one["seeds_md5"] != two["seeds_md5"], "the seed-set change is a new version"
    before = lineage(ws, "run-run1", "d1")
    assert before["model_version"] == "v1" and before["seeds_md5"] == one["seeds_md5"]
    assert before["vocabulary"] == "vocabulary/d1.yaml"
    assert lineage(ws, "run-run2", "d1")["model_version"] == "v2"

    model_out, labels_out = tmp_path / "model", tmp_path / "labels"
    restore(ws, "run-run1", before["model"], str(model_out))
    restore(ws, "run-run1", before["labels"], str(labels_out))
    assert _local(model_out) == first_model
    assert _local(labels_out) == first_labels
    seeds_out = tmp_path / "seeds"
    restore(ws, "run-run1", "seeds", str(seeds_out))
    assert sorted(_local(seeds_out)) == ["images/s1.png", "labels/s1.png"]
    with pytest.raises(LamflowError, match="not versioned"):
        restore(ws, "run-run1", "labels/nope", str(tmp_path / "nope"))


def test_a_run_is_restored_byte_for_byte_after_the_seed_set_changed(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    one, two, model, labels = _two_runs(root, VersioningParams())
    assert one["workspace"] == str(Path(root) / "versions")
    assert (Path(root) / "dvc-store").is_dir(), "the data went to the DVC remote beside ROOT"
    _check_restores_run_one(tmp_path / "restored", one, two, model, labels)
    lineage_file = json.loads((Path(one["workspace"]) / "lineage/d1.json").read_text())
    assert lineage_file["run"] == "run2"


def test_versioning_an_unchanged_run_again_keeps_one_commit(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    _write_tree(root, {"seeds/a.png": b"a", "models/v1/config.json": b"{}", "l/d/x.png": b"x"})
    drops = {"d": {"labels": f"{root}/l/d", "vocabulary": ""}}
    first = version(root, "r1", f"{root}/models/v1", "v1", f"{root}/seeds", drops)
    again = version(root, "r1", f"{root}/models/v1", "v1", f"{root}/seeds", drops)
    assert first["commit"] == again["commit"]


@pytest.mark.integration
def test_versions_go_through_seaweedfs(seaweed: Any, tmp_path: Path) -> None:
    root = "s3://lamflow-test/versioned"
    params = VersioningParams(workspace=str(tmp_path / "workspace"))
    one, two, model, labels = _two_runs(root, params)
    assert one["remote"] == "s3://lamflow-test/versioned/dvc-store"
    assert _snapshot(one["remote"]), "the DVC remote on S3 holds the data"
    _check_restores_run_one(tmp_path / "restored", one, two, model, labels)


def test_the_versions_command_lists_traces_and_restores(tmp_path: Path, capsys) -> None:
    from cli.main import main

    root = str(tmp_path / "root")
    one, _, model, _ = _two_runs(root, VersioningParams())
    ws = ["--workspace", one["workspace"]]
    assert main(["versions", "list", *ws]) == 0
    assert [v["tag"] for v in json.loads(capsys.readouterr().out)] == ["run-run2", "run-run1"]
    assert main(["versions", "lineage", *ws, "--rev", "run-run1", "--drive", "d1"]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == "v1"
    out = tmp_path / "model"
    argv = ["versions", "restore", *ws, "--rev", "run-run1", "--path", "models/v1"]
    assert main([*argv, "--out", str(out)]) == 0
    assert _local(out) == model


def test_a_retried_run_never_moves_the_tag_of_its_first_try(tmp_path: Path) -> None:
    """Prefect reuses a flow run's id when it is retried: the retry is tagged run-ID.2 and the
    first try's tag still names what the first try made."""
    root = str(tmp_path / "root")
    _write_tree(root, {"seeds/a.png": b"a", "models/v1/config.json": b"{}", "l/d/x.png": b"x"})
    drops = {"d": {"labels": f"{root}/l/d", "vocabulary": ""}}
    first = version(root, "r1", f"{root}/models/v1", "v1", f"{root}/seeds", drops)
    _write_tree(root, {"l/d/x.png": b"relabeled"})
    retry = version(root, "r1", f"{root}/models/v1", "v1", f"{root}/seeds", drops)
    assert (first["tag"], retry["tag"]) == ("run-r1", "run-r1.2")
    assert retry["commit"] != first["commit"]
    restore(first["workspace"], "run-r1", "labels/d", str(tmp_path / "then"))
    assert (tmp_path / "then/x.png").read_bytes() == b"x"
