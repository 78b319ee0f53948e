"""The CLI fails loudly and briefly: a backend's missing optional package is one line with its
install hint, and a run on a temporary Prefect server ends without API log errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli.main import main
from tests.conftest import make_scene

REPO = Path(__file__).resolve().parents[2]


def _frames(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(make_scene(0)[0]).save(folder / "f0.png")
    return folder


def _vocabulary_args(tmp_path: Path, backend: str) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text(f"data: {{root: {tmp_path / 'root'}}}\n")
    return [
        "vocabulary",
        "--images",
        str(_frames(tmp_path / "images")),
        "--out",
        str(tmp_path / "vocabulary.yaml"),
        "--params",
        str(params),
        "--set",
        f"vocabulary.backend={backend}",
        "--no-progress",
    ]


def test_a_missing_optional_package_is_one_line_with_its_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The package is really absent for the run (an import of it fails), not replaced by a fake.
    monkeypatch.setitem(sys.modules, "transformers", None)
    code = main(_vocabulary_args(tmp_path, "clip"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "lamflow: error: tagger 'clip' needs a missing dependency "
        "(pip install transformers (needs a local model)): no module named 'transformers'"
    ]
    assert not (tmp_path / "vocabulary.yaml").exists()


def test_the_console_script_shows_no_traceback_for_a_missing_package(tmp_path: Path) -> None:
    """In a fresh process, the import of transformers fails as if it were not installed."""
    args = _vocabulary_args(tmp_path, "clip")
    code = (
        "import sys; sys.modules['transformers'] = None; from cli.main import main; "
        f"sys.exit(main({args!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("lamflow:")]
    assert line.endswith(
        "(pip install transformers (needs a local model)): no module named 'transformers'"
    )


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_on_a_temporary_prefect_server_ends_without_api_log_errors(tmp_path: Path) -> None:
    """`lamflow nightly` with no Prefect API configured starts a temporary server; the logs
    still queued when the flow ends are sent before it stops (they used to be sent after it,
    printing "Error logging to API / All connection attempts failed" at exit)."""
    params = tmp_path / "params.yaml"
    params.write_text(f"data: {{root: {tmp_path / 'root'}}}\n")  # no drops: a short run
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "nightly", "--params", str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Stopping temporary server" in proc.stderr  # it did run on a temporary server
    assert "Error logging to API" not in proc.stderr, proc.stderr[-3000:]
    assert "All connection attempts failed" not in proc.stderr
