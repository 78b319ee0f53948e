"""ingest, add_drop, the stage table, params validation and done markers: no model needed.

Leases are tested in test_leases.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cli.main import main
from cli.stages import STAGES, resolve_stage, stage_parser
from flows.state import done_drives, mark_done
from lam.errors import LamflowError
from lamflow.params import IngestParams
from tasks.ingest import add_drop, ingest, list_drops, read_ingest
from tests.pipeline.helpers import write_drop


def test_ingest_parses_every_header_and_leaves_truncation_to_annotate(tmp_path: Path) -> None:
    root = str(tmp_path)
    write_drop(root, "d1", 4, bad=True)
    manifest = ingest(root, "d1", IngestParams(decode_check=False), progress=False)
    assert (manifest["frames"], manifest["ok"], manifest["bad"]) == (7, 5, 2)
    by_stem = {e["stem"]: e for e in manifest["entries"]}
    assert by_stem["d1_bad_empty"]["reason"] == "empty file (0 bytes)"
    assert by_stem["d1_bad_corrupt"]["reason"].startswith("cannot decode")
    truncated = by_stem["d1_bad_truncated"]  # its header is whole: annotate quarantines it
    assert truncated["ok"] and (truncated["width"], truncated["height"]) == (96, 64)
    assert (by_stem["d1_0000"]["width"], by_stem["d1_0000"]["height"]) == (96, 64)


def test_ingest_lists_hashes_and_flags_bad_frames(tmp_path: Path) -> None:
    root = str(tmp_path)
    write_drop(root, "d1", 4, bad=True)
    manifest = ingest(root, "d1", IngestParams(decode_check=True), progress=False)
    assert (manifest["frames"], manifest["ok"], manifest["bad"]) == (7, 4, 3)
    by_stem = {e["stem"]: e for e in manifest["entries"]}
    assert by_stem["d1_bad_empty"]["reason"] == "empty file (0 bytes)"
    assert by_stem["d1_bad_truncated"]["reason"].startswith("cannot decode")
    assert by_stem["d1_bad_corrupt"]["reason"].startswith("cannot decode")
    good = by_stem["d1_0000"]
    assert good["ok"] and (good["width"], good["height"]) == (96, 64)
    assert len(good["sha256"]) == 64 and good["size"] > 0
    assert read_ingest(root, "d1") == json.loads((tmp_path / "drops/d1/ingest.json").read_text())


@pytest.mark.parametrize("drive", ["..", "../etc", "/abs", "a/b", "sp ace", "-x", ""])
def test_unsafe_drive_ids_are_rejected(tmp_path: Path, drive: str) -> None:
    with pytest.raises(LamflowError, match="unsafe drive id"):
        ingest(str(tmp_path), drive, progress=False)


def test_ingest_rejects_unsafe_frame_names(tmp_path: Path) -> None:
    images = tmp_path / "drops/d1/images"
    images.mkdir(parents=True)
    (images / "bad name.png").write_bytes(b"x")
    with pytest.raises(LamflowError, match="unsafe frame name 'bad name'"):
        ingest(str(tmp_path), "d1", progress=False)


def test_add_drop_repeats_under_new_names(tmp_path: Path) -> None:
    write_drop(str(tmp_path / "src"), "s", 2)
    n = add_drop(str(tmp_path / "src/drops/s/images"), str(tmp_path), "big", repeat=3)
    names = sorted(p.name for p in (tmp_path / "drops/big/images").iterdir())
    assert n == 6 and names[:3] == ["s_0000_r000.png", "s_0000_r001.png", "s_0000_r002.png"]
    assert list_drops(str(tmp_path)) == ["big"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_row_resolves_to_a_function_and_parser(name: str) -> None:
    spec, fn = resolve_stage(name)
    assert callable(fn) and fn.__name__ == spec.target.rsplit(":", 1)[1]
    parser = stage_parser(name)
    assert {"--params", "--set", "--json-out"} <= set(parser._option_string_actions)


def test_unknown_stage_lists_the_known_ones() -> None:
    with pytest.raises(LamflowError, match="known stages: adapt, annotate, .*qc"):
        resolve_stage("nope")


def test_bad_params_fail_before_any_work_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_drop(str(tmp_path), "d1", 1)
    params = tmp_path / "params.yaml"
    params.write_text(f"data: {{root: {tmp_path}}}\ningest: {{decode_chek: true}}\n")
    rc = main(["stage", "ingest", "--drive", "d1", "--params", str(params)])
    assert rc == 2
    assert "ingest.decode_chek: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "drops/d1/ingest.json").exists()
    rc = main(
        ["stage", "ingest", "--drive", "d1", "--params", str(params), "--set", "qc.max_drift=2"]
    )
    assert rc == 2 and "qc.max_drift" in capsys.readouterr().err


def test_stage_cli_writes_the_result(tmp_path: Path) -> None:
    write_drop(str(tmp_path), "d1", 2, bad=True)
    out = tmp_path / "ingest_result.json"
    rc = main(
        [
            "stage",
            "ingest",
            "--drive",
            "d1",
            "--set",
            f"data.root={tmp_path}",
            "--set",
            "ingest.decode_check=true",
            "--json-out",
            str(out),
        ]
    )
    assert rc == 0 and json.loads(out.read_text())["bad"] == 3


def test_done_markers(tmp_path: Path) -> None:
    mark_done(str(tmp_path), "d1", {"labeled": 3})
    assert done_drives(str(tmp_path)) == {"d1"}
    with pytest.raises(LamflowError):
        mark_done(str(tmp_path), "../x", {})


def test_drops_by_age_keeps_the_first_finish_across_relabels(tmp_path: Path) -> None:
    from flows.state import drops_by_age, read_done

    root = str(tmp_path)
    mark_done(root, "b", {"model_version": "v1"})
    time.sleep(1.1)  # records carry seconds
    mark_done(root, "a", {"model_version": "v1"})
    first = read_done(root, "b")["first_finished_at"]
    time.sleep(1.1)
    mark_done(root, "b", {"model_version": "v2"})  # relabeled later
    assert read_done(root, "b")["first_finished_at"] == first
    assert drops_by_age(root) == ["b", "a"]
