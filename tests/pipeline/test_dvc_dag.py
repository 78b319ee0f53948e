"""The DVC pipeline: the seed set stage and `import_seeds` (fast), and the DAG itself (slow).

The slow test runs dvc.yaml for real in a copy of the working tree (a fresh clone: no DVC cache,
no remote), on an 8-frame CamVid val drop with few training iterations: the whole chain runs,
a second run re-runs nothing, an edited seed label re-runs the seed set and everything after
it (never the stages before), and `dvc exp run -S` runs and compares an experiment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lam.errors import LamflowError
from tasks.seed_bootstrap import import_seeds
from tasks.seed_set import add_seed, list_seeds
from tasks.seed_set import seed_set as seed_set_stage  # `seed_set` is a fixture here
from tests.conftest import CAMVID, REPO, make_scene
from tests.pipeline.helpers import TINY_CLASSES

SEEDS = ["seed_00", "seed_01", "seed_02"]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_import_seeds_gives_the_same_bytes_every_time(tmp_path: Path, seed_set: Path) -> None:
    args = (str(seed_set / "images"), str(seed_set / "labels"), SEEDS[:2])
    first = import_seeds(*args, str(tmp_path / "a"), str(seed_set / "classes.json"), "camvid")
    import_seeds(*args, str(tmp_path / "b"), str(seed_set / "classes.json"), "camvid")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert [p["source"] for p in first] == ["camvid", "camvid"]
    assert (tmp_path / "a/labels/seed_00.png").read_bytes() == (
        seed_set / "labels/seed_00.png"
    ).read_bytes()  # copied, not re-encoded
    assert "added_at" not in first[0] and "from" not in first[0]  # no time, no path
    # done once: a later import leaves the set (and a human's edits) alone
    again = import_seeds(*args[:2], SEEDS, str(tmp_path / "a"), str(seed_set / "classes.json"))
    assert [p["stem"] for p in again] == SEEDS[:2]


def test_import_seeds_names_a_missing_stem(tmp_path: Path, seed_set: Path) -> None:
    with pytest.raises(LamflowError, match="'nope' not found"):
        import_seeds(
            str(seed_set / "images"),
            str(seed_set / "labels"),
            ["nope"],
            str(tmp_path / "s"),
            str(seed_set / "classes.json"),
        )


def _masks_and_drop(tmp_path: Path) -> tuple[Path, Path]:
    """A seed_masks output with one label (frame d9_0001 of the drop) and the drop's images."""
    drop, masks = tmp_path / "drop", tmp_path / "masks"
    drop.mkdir()
    (masks / "records").mkdir(parents=True)
    img, lab = make_scene(7)
    Image.fromarray(img).save(drop / "d9_0001.png")
    Image.fromarray(img).save(drop / "d9_0002.png")
    Image.fromarray(lab).save(masks / "d9_0001.png")
    return masks, drop


def test_seed_set_merges_seeds_and_masks_and_reports_the_selection(
    tmp_path: Path, seed_set: Path
) -> None:
    classes = str(seed_set / "classes.json")
    seeds = tmp_path / "seeds"
    import_seeds(str(seed_set / "images"), str(seed_set / "labels"), SEEDS[:2], str(seeds), classes)
    masks, drop = _masks_and_drop(tmp_path)
    selected = tmp_path / "seeds.yaml"
    rows = [{"rank": 1, "stem": "d9_0002"}, {"rank": 0, "stem": "d9_0001"}]
    selected.write_text(yaml.safe_dump({"seeds": rows}))
    out, report = tmp_path / "out", tmp_path / "seed_set.json"
    (out / "provenance").mkdir(parents=True)
    (out / "provenance/gone.json").write_text("{}")  # a seed no source holds any more

    def run() -> dict:
        return seed_set_stage(
            str(seeds), str(out), classes, str(masks), str(drop), str(selected), str(report)
        )

    doc = run()
    assert doc["from_seeds"] == SEEDS[:2] and doc["from_masks"] == ["d9_0001"]
    assert doc["selected_labeled"] == ["d9_0001"] and doc["selected_missing"] == ["d9_0002"]
    assert json.loads(report.read_text()) == doc
    merged = {p["stem"]: p for p in list_seeds(str(out))}
    assert sorted(merged) == ["d9_0001", *SEEDS[:2]]
    assert merged["d9_0001"]["source"] == "seed_masks"
    assert not (out / "provenance/gone.json").exists()
    before = _tree(out)
    assert run() == doc and _tree(out) == before  # same inputs, same bytes: no retraining

    # a label edited by hand: a new sha256 in the merged provenance, and reported
    label = seeds / "labels/seed_00.png"
    edited = np.array(Image.open(label))
    edited[:4, :4] = 2
    Image.fromarray(edited).save(label)
    doc = run()
    assert doc["relabeled"] == ["seed_00"]
    assert (
        list_seeds(str(out))[0]["label_sha256"]
        != json.loads((seeds / "provenance/seed_00.json").read_text())["label_sha256"]
    )


def test_seed_set_fails_naming_a_bad_seed(tmp_path: Path, seed_set: Path) -> None:
    classes = str(seed_set / "classes.json")
    seeds = tmp_path / "seeds"
    import_seeds(str(seed_set / "images"), str(seed_set / "labels"), SEEDS[:1], str(seeds), classes)
    Image.fromarray(np.full((64, 96), 9, np.uint8)).save(seeds / "labels/seed_00.png")
    with pytest.raises(LamflowError, match="seed seed_00"):
        seed_set_stage(str(seeds), str(tmp_path / "out"), classes)
    with pytest.raises(LamflowError, match="no seeds"):
        seed_set_stage(str(tmp_path / "empty"), str(tmp_path / "out2"), classes)


def test_seed_set_keeps_a_zero_shot_seeds_confidence(tmp_path: Path) -> None:
    from lam.classes import ClassList

    (tmp_path / "classes.json").write_text(json.dumps(TINY_CLASSES))
    img, lab = make_scene(3)
    png = tmp_path / "f.png"
    Image.fromarray(img).save(png)
    conf = np.full(lab.shape, 200, np.uint8)
    classes = ClassList.from_json(TINY_CLASSES)
    add_seed(str(tmp_path / "s"), "z_1", png.read_bytes(), "png", lab, classes, {}, conf)
    seed_set_stage(str(tmp_path / "s"), str(tmp_path / "out"), str(tmp_path / "classes.json"))
    assert (tmp_path / "out/confidence/z_1.png").read_bytes() == (
        tmp_path / "s/confidence/z_1.png"
    ).read_bytes()


def test_command_line_imports_then_merges(
    tmp_path: Path, seed_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"seeds": SEEDS[:2]}}))
    folders = [f"--{k}={seed_set / k}" for k in ("images", "labels")]
    classes = f"--classes={seed_set / 'classes.json'}"
    out = tmp_path / "seeds"
    imported = main(["import-seeds", *folders, classes, f"--out={out}", f"--params={params}"])
    assert imported == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["stem"] for p in printed] == SEEDS[:2]  # params train.seeds
    merged = tmp_path / "merged"
    assert main(["stage", "seed_set", f"--seeds={out}", classes, f"--out={merged}"]) == 0
    assert json.loads(capsys.readouterr().out)["from_seeds"] == SEEDS[:2]
    none = f"--seeds={tmp_path / 'none'}"
    assert main(["stage", "seed_set", none, classes, f"--out={merged}"]) == 2
    assert "lamflow: error: no seeds" in capsys.readouterr().err


# --- the DAG, for real ---------------------------------------------------------------------

BEFORE_SEEDS = {"drop", "ingest", "vocabulary", "select_seeds", "seed_masks"}
FROM_SEEDS = {"seed_set", "train", "adapt", "annotate", "qc", "evaluate", "export"}
SMALL = {  # a few minutes of CPU become seconds; the DAG is the same
    "vocabulary": {"max_frames": 4, "views": "full"},
    "select_seeds": {"short_side": 96, "budget": 3},
    "train": {"iterations": 8, "optou_iterations": 2},
    "adapt": {"max_frames": 4, "rounds": 1},
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return output


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the working tree as a fresh clone (own git repo, no DVC cache), with an
    8-frame CamVid val drop, the seed frames of `train.seeds` and `SMALL` params; no data/seeds
    (git ignores it)."""
    if not (CAMVID / "classes.json").exists():
        pytest.skip(f"CamVid not found at {CAMVID}")
    if shutil.which("git") is None:
        pytest.skip("git not found")
    base = tmp_path_factory.mktemp("dag")
    repo, camvid = base / "repo", base / "camvid"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            (repo / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name.decode())
    shutil.rmtree(repo / "outputs", ignore_errors=True)
    camvid.mkdir()
    shutil.copy(CAMVID / "classes.json", camvid / "classes.json")
    for split in ("images", "labels"):
        (camvid / "val" / split).mkdir(parents=True)
        for path in sorted((CAMVID / "val" / split).iterdir())[:8]:
            shutil.copy(path, camvid / "val" / split / path.name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for stem in params["train"]["seeds"]:  # what restore_seeds imports: train frames + labels
        for split, suffix in (("images", ".jpg"), ("labels", ".png")):
            (camvid / "train" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(CAMVID / "train" / split / f"{stem}{suffix}", camvid / "train" / split)
    params["data"]["camvid"] = str(camvid)
    for section, values in SMALL.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),  # this copy's code, not the editable install's
        # the copy has no ../shared beside it: the default annotator's weights are found here
        "LAMFLOW_WEIGHTS": str(REPO / ".." / "shared" / "weights" / "edgenets"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        _run(cmd, repo, env)
    return repo, env


@pytest.mark.slow
def test_dvc_dag_on_a_fresh_clone(clone: tuple[Path, dict[str, str]]) -> None:
    repo, env = clone
    dvc = ["dvc"]
    assert not (repo / "data/seeds").exists()  # a fresh clone: only data/seeds.dvc

    # A plain `dvc repro`, no `make data` first: its first stage restores data/seeds (imported
    # from the full CamVid, verified against data/seeds.dvc, committed into the cache).
    first = _run([*dvc, "repro"], repo, env)
    assert _ran(first) == {"restore_seeds"} | BEFORE_SEEDS | FROM_SEEDS
    ran = [line for line in first.splitlines() if line.startswith("Running stage")]
    assert ran[0] == "Running stage 'restore_seeds':"
    assert '"restored_from": "import", "verified": true, "committed": true' in first
    _run(["git", "diff", "--exit-code", "data/seeds.dvc"], repo, env)  # verified, not re-recorded
    assert (repo / "outputs/lamflow/dvc/export").is_dir()
    assert json.loads((repo / "outputs/lamflow/dvc/seed_set.json").read_text())["seeds"] == 6

    assert "up to date" in _run([*dvc, "status"], repo, env)
    assert _ran(_run([*dvc, "repro"], repo, env)) == set()

    # A retrain from the same seeds makes the same weights (only train_report.json's seconds
    # may differ): the stages that read the report may re-run, annotate and what follows not.
    assert _ran(_run([*dvc, "repro", "--force", "--single-item", "train"], repo, env)) == {"train"}
    assert _ran(_run([*dvc, "repro"], repo, env)) <= {"adapt", "qc"}

    label = repo / "data/seeds/labels/0006R0_f03150.png"
    pixels = np.array(Image.open(label))
    pixels[:8, :8] = 3 if pixels[0, 0] != 3 else 0  # a human corrects a corner: road / sky
    Image.fromarray(pixels).save(label)
    changed = json.loads(_run([*dvc, "status", "--json"], repo, env))
    assert set(changed) == {"data/seeds.dvc", "seed_set"}  # the rest follows from seed_set
    assert _ran(_run([*dvc, "repro"], repo, env)) == FROM_SEEDS
    _run(["git", "add", "-A"], repo, env)  # data/seeds.dvc, dvc.lock: the new baseline
    _run(["git", "commit", "-qm", "relabeled a seed"], repo, env)

    # an experiment on one param (export's: one stage re-runs, so the test stays short), compared
    exp = _run([*dvc, "exp", "run", "-S", "export.format=color", "-n", "color"], repo, env)
    assert _ran(exp) == {"export"}
    assert "color" in _run([*dvc, "exp", "show", "--json"], repo, env)
    diff = json.loads(_run([*dvc, "exp", "diff", "HEAD", "color", "--all", "--json"], repo, env))
    assert diff["params"]["params.yaml"]["export.format"] == {"old": "png", "new": "color"}
    miou = diff["metrics"]["outputs/lamflow/dvc/metrics/val.json"]["miou"]
    assert miou["old"] is not None and miou["old"] == miou["new"]  # both runs' metrics readable
