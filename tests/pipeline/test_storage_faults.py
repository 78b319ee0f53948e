"""Storage faults never become lost frames: read errors raise (and are retried), only
undecodable bytes are quarantined, and exports follow the bytes they were made from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tasks.annotate as annotate_module
import tasks.ingest as ingest_module
from lamflow.params import AnnotateParams
from tasks.annotate import annotate
from tasks.export import export
from tasks.ingest import ingest
from tests.pipeline.helpers import png_bytes, write_drop


def _flaky(real: Any, failing: str, errors: list[BaseException]) -> Any:
    """read_bytes that raises the next of `errors` for URLs ending in `failing`."""

    def read(url: str) -> bytes:
        if url.endswith(failing) and errors:
            raise errors.pop(0)
        return real(url)

    return read


@pytest.mark.parametrize(
    "error", [PermissionError("403 Forbidden"), OSError("503 Slow Down"), TimeoutError("reset")]
)
def test_a_read_error_raises_and_a_rerun_labels_the_frame(
    tmp_path: Path, tiny_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    write_drop(str(tmp_path), "d1", 4, bad=True)
    images, out = str(tmp_path / "drops/d1/images"), str(tmp_path / "out")
    monkeypatch.setattr(
        annotate_module, "read_bytes", _flaky(annotate_module.read_bytes, "d1_0002.png", [error])
    )
    with pytest.raises(type(error)):
        annotate(tiny_model["model"], images, out, AnnotateParams(batch_size=2), progress=False)
    assert not (tmp_path / "out/records/d1_0002.json").exists(), "an I/O fault is no quarantine"

    summary = annotate(
        tiny_model["model"], images, out, AnnotateParams(batch_size=2), progress=False
    )
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out/records").glob("*.json")}
    assert records["d1_0002"]["status"] == "labeled"
    assert sorted(q["stem"] for q in summary.quarantined) == [
        "d1_bad_corrupt",
        "d1_bad_empty",
        "d1_bad_truncated",
    ]
    assert sum(r["status"] == "labeled" for r in records.values()) == 4


def test_quarantines_of_older_code_are_retried(tmp_path: Path, tiny_model: dict[str, Any]) -> None:
    """Before QUARANTINE_RULES 2 a read error quarantined a frame for good (its record had the
    frame's sha256 and the model version); such records are labeled again now."""
    write_drop(str(tmp_path), "d1", 2)
    images, out = str(tmp_path / "drops/d1/images"), tmp_path / "out"
    annotate(tiny_model["model"], images, str(out), AnnotateParams(), progress=False)
    rec_url = out / "records/d1_0001.json"
    rec = json.loads(rec_url.read_text())
    old = {**rec, "status": "quarantined", "reason": "unreadable: 403", "quarantine_rules": 0}
    rec_url.write_text(json.dumps(old))
    (out / "labels/d1_0001.png").unlink()
    summary = annotate(tiny_model["model"], images, str(out), AnnotateParams(), progress=False)
    assert summary.labeled == 1 and summary.skipped == 1
    assert json.loads(rec_url.read_text())["status"] == "labeled"


def test_ingest_raises_on_a_read_error_instead_of_marking_the_frame_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_drop(str(tmp_path), "d1", 3)
    monkeypatch.setattr(
        ingest_module,
        "read_bytes",
        _flaky(ingest_module.read_bytes, "d1_0001.png", [PermissionError("403")]),
    )
    with pytest.raises(PermissionError):
        ingest(str(tmp_path), "d1", progress=False)
    assert ingest(str(tmp_path), "d1", progress=False)["bad"] == 0


def test_export_follows_the_input_bytes_and_drops_vanished_frames(
    tmp_path: Path, tiny_model: dict[str, Any]
) -> None:
    write_drop(str(tmp_path), "d1", 3)
    images, out, dest = tmp_path / "drops/d1/images", tmp_path / "out", tmp_path / "export"
    model = tiny_model["model"]

    def run() -> dict[str, Any]:
        annotate(model, str(images), str(out), AnnotateParams(), progress=False)
        return export(str(out), model, str(dest), progress=False)

    assert run()["exported"] == 3
    assert run()["exported"] == 0  # same bytes, same model: nothing rewritten
    (images / "d1_0001.png").write_bytes(png_bytes(77))  # a frame's bytes change ...
    (images / "d1_0002.png").unlink()  # ... and one leaves the drop
    for sub in ("records", "labels", "confidence"):
        (out / sub / "d1_0002.json" if sub == "records" else out / sub / "d1_0002.png").unlink()
    again = run()
    assert again["exported"] == 1
    assert (dest / "labels/d1_0001.png").read_bytes() == (out / "labels/d1_0001.png").read_bytes()
    assert not (dest / "labels/d1_0002.png").exists()
    index = json.loads((dest / "index.json").read_text())
    assert sorted(f["stem"] for f in index["frames"]) == ["d1_0000", "d1_0001"]
