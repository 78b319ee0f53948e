"""`lamflow train | annotate | evaluate`: happy path, leakage, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main

_REPO = Path(__file__).resolve().parents[2]

FAST = ["--set", "train.iterations=5", "--set", "train.scales=[1.0]"]
# The ImageNet backbone, which knows no class: what a seed does not show, it cannot predict
LITE0 = [
    "--set", "model.backbone=efficientnet_lite0", "--set", "model.backbone_options={}",
    "--set", "model.out_stride=4", "--set", "model.optou_steps=1",
]  # fmt: skip


def _train(folder: Path, out: Path, seeds=("drive1_0000",), extra=()) -> int:
    return main(
        [
            "train",
            "--images",
            str(folder / "images"),
            "--labels",
            str(folder / "labels"),
            "--classes",
            str(folder / "classes.json"),
            "--seeds",
            *seeds,
            "--out",
            str(out),
            *FAST,
            *extra,
        ]
    )


def _annotate(model: Path | str, images: Path | str, out: Path | str, *extra: str) -> int:
    return main(
        ["annotate", "--model", str(model), "--images", str(images), "--out", str(out), *extra]
    )


@pytest.fixture()
def model_dir(scene_folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    assert _train(scene_folder, out) == 0
    return out


def test_train_annotate_evaluate(scene_folder: Path, model_dir: Path, tmp_path: Path, capsys):
    assert (model_dir / "config.json").exists() and (model_dir / "head.safetensors").exists()
    report = json.loads((model_dir / "train_report.json").read_text())
    assert (
        report["seeds"][0]["stem"] == "drive1_0000"
        and len(report["seeds"][0]["image_sha256"]) == 64
    )
    out = tmp_path / "ann"
    overlays = ["--set", "annotate.write_overlays=2"]
    assert _annotate(model_dir, str(scene_folder / "images"), str(out), *overlays) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["labeled"] == 6 and summary["quarantined"] == []
    for stem in [f"drive1_{i:04d}" for i in range(6)]:
        lab = np.asarray(Image.open(out / "labels" / f"{stem}.png"))
        conf = np.asarray(Image.open(out / "confidence" / f"{stem}.png"))
        assert lab.shape == conf.shape == (64, 96) and lab.dtype == np.uint8
        assert lab.max() <= 2
    assert len(list((out / "overlays").glob("*.jpg"))) == 2
    lines = (out / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(lines) == 6 and rec["stem"] == "drive1_0000" and rec["width"] == 96
    assert 0 < rec["mean_confidence"] <= 1 and rec["seconds"] >= 0
    assert abs(sum(rec["class_fractions"].values()) - 1) < 1e-3

    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(out),
                "--labels",
                str(scene_folder / "labels"),
                "--classes",
                str(scene_folder / "classes.json"),
                "--exclude",
                "drive1_0000",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 5 and 0 <= scores["miou"] <= 100
    assert set(scores["per_class"]) == {"sky", "road", "car"}

    # a re-run skips every finished frame and writes nothing twice
    assert _annotate(model_dir, str(scene_folder / "images"), str(out)) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["skipped"] == 6 and again["labeled"] == 0


def test_train_no_seeds_drops_the_params_seeds_and_refuses_seeds_given_with_it(
    scene_folder: Path, tmp_path: Path, capsys
):
    """params.yaml lists train.seeds; `--no-seeds` must not quietly train on them, and seeds
    given on the command line beside it are an error naming them, not ignored."""
    common = ["train", "--images", str(scene_folder / "images")]
    common += ["--labels", str(scene_folder / "labels"), "--classes"]
    common += [str(scene_folder / "classes.json")]
    capsys.readouterr()
    code = main([*common, "--no-seeds", "--seeds", "drive1_0000", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "--no-seeds" in err and "drive1_0000" in err
    assert not (tmp_path / "a").exists()
    assert main([*common, "--no-seeds", "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "train_report.json").read_text())
    assert report["seeds"] == [] and report["class_map"]["origin"]


def test_train_warns_about_classes_no_seed_shows(scene_folder: Path, tmp_path: Path, capsys):
    """A seed without any car pixel: the model cannot learn 'car', and train says so (a
    warning on the `tasks.train` logger, which the CLI prints on stderr) and in its JSON and
    report (unseen_classes), instead of failing silently later."""
    lab = np.array(Image.open(scene_folder / "labels" / "drive1_0000.png"))
    lab[lab == 2] = 1  # the car becomes road
    Image.fromarray(lab).save(scene_folder / "labels" / "drive1_0000.png")
    # A handler on the stage's own logger: whoever configured the root (Prefect does) is moot.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("tasks.train").addHandler(handler)
    try:
        capsys.readouterr()
        assert _train(scene_folder, tmp_path / "model", extra=LITE0) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["unseen_classes"] == ["car"]
        assert any("never be predicted: car" in r.getMessage() for r in records)
        report = json.loads((tmp_path / "model" / "train_report.json").read_text())
        assert report["unseen_classes"] == ["car"] and report["class_pixels"]["car"] == 0
        # Seeds that show every class: nothing to warn about.
        records.clear()
        assert _train(scene_folder, tmp_path / "model2", seeds=("drive1_0001",), extra=LITE0) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["unseen_classes"] == []
        assert not any("no seed pixel" in r.getMessage() for r in records)
        # The default source network knows cars: mapped by name, 'car' is not unseen.
        records.clear()
        assert _train(scene_folder, tmp_path / "model3") == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["unseen_classes"] == []
        assert not any("never be predicted" in r.getMessage() for r in records)
    finally:
        logging.getLogger("tasks.train").removeHandler(handler)


def test_annotate_never_reads_labels(scene_folder: Path, model_dir: Path, tmp_path: Path):
    """Leakage test: predictions are byte-identical with and without the label folder."""
    with_labels = tmp_path / "a"
    assert _annotate(model_dir, str(scene_folder / "images"), str(with_labels)) == 0
    shutil.rmtree(scene_folder / "labels")
    without = tmp_path / "b"
    assert _annotate(model_dir, str(scene_folder / "images"), str(without)) == 0
    for png in (with_labels / "labels").glob("*.png"):
        assert png.read_bytes() == (without / "labels" / png.name).read_bytes()
        assert (with_labels / "confidence" / png.name).read_bytes() == (
            without / "confidence" / png.name
        ).read_bytes()


def test_corrupt_frames_are_quarantined_and_the_rest_labeled(
    scene_folder: Path, model_dir: Path, tmp_path: Path, capsys
):
    images = scene_folder / "images"
    good = (images / "drive1_0001.png").read_bytes()
    (images / "drive1_9990.png").write_bytes(good[: len(good) // 3])  # truncated
    (images / "drive1_9991.jpg").write_bytes(b"")  # empty
    (images / "drive1_9992.png").write_bytes(b"not an image at all")
    out = tmp_path / "ann"
    assert _annotate(model_dir, str(images), str(out)) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["labeled"] == 6
    assert sorted(q["stem"] for q in summary["quarantined"]) == [
        "drive1_9990",
        "drive1_9991",
        "drive1_9992",
    ]
    assert "3 frame(s) quarantined" in captured.err
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records if r["stem"].startswith("drive1_999")} == {"quarantined"}
    assert all(r["reason"] for r in records if r["status"] == "quarantined")


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_train_errors_are_one_line(scene_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "m"
    assert _train(scene_folder, out, seeds=("nope",)) == 2
    assert "seed 'nope' not found" in _error(capsys)

    bad = tmp_path / "bad"
    shutil.copytree(scene_folder, bad)
    lab = np.asarray(Image.open(bad / "labels" / "drive1_0000.png")).copy()
    lab[0, 0] = 9
    Image.fromarray(lab).save(bad / "labels" / "drive1_0000.png")
    assert _train(bad, out) == 2
    assert "class ids [9] outside 0..2" in _error(capsys)

    Image.fromarray(lab[:10]).save(bad / "labels" / "drive1_0000.png")
    assert _train(bad, out) == 2
    assert "differs from frame size" in _error(capsys)

    (bad / "labels" / "drive1_0000.png").unlink()
    assert _train(bad, out) == 2
    assert "has no label drive1_0000.png" in _error(capsys)

    assert _train(tmp_path / "missing", out) == 2
    assert "classes file not found" in _error(capsys)
    (bad / "images").rename(bad / "moved")
    assert _train(bad, out) == 2
    assert "no such image folder" in _error(capsys)

    (bad / "classes.json").write_text("{not json")
    assert _train(bad, out, seeds=("drive1_0001",)) == 2
    assert "is not JSON" in _error(capsys)

    assert _train(scene_folder, out, extra=["--set", "train.iterationz=3"]) == 2
    assert "train.iterationz: unknown key" in _error(capsys)


def test_annotate_and_evaluate_errors(scene_folder: Path, model_dir: Path, tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _annotate(model_dir, str(empty), str(tmp_path / "o")) == 2
    assert "no frames" in _error(capsys)
    assert _annotate(tmp_path / "nomodel", str(empty), "x") == 2
    assert "no model at" in _error(capsys)
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(empty),
                "--labels",
                str(scene_folder / "labels"),
                "--classes",
                str(scene_folder / "classes.json"),
            ]
        )
        == 2
    )
    assert "no predicted label PNGs" in _error(capsys)


def test_console_script_exits_nonzero_without_traceback(tmp_path: Path):
    exe = Path(sys.executable).parent / "lamflow"
    proc = subprocess.run(
        [
            str(exe),
            "evaluate",
            "--pred",
            str(tmp_path),
            "--labels",
            str(tmp_path),
            "--classes",
            str(tmp_path / "none.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lamflow: error: classes file not found: {tmp_path / 'none.json'}"
    ]


_EXIT_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from cli.main import exit_without_teardown
out, hook = Path(sys.argv[1]), sys.argv[2]
def late_writer():
    time.sleep(0.3)
    out.joinpath("thread").write_text("joined")
threading.Thread(target=late_writer).start()  # non-daemon: Python's exit waits for it
def thread_hook():
    out.joinpath("thread_hook").write_text("ran")
    if hook == "raises":
        raise RuntimeError("a hook failed")
threading._register_atexit(thread_hook)
atexit.register(lambda: out.joinpath("atexit").open("a").write("ran"))
print("result", end="")  # no newline: still in stdout's buffer
sys.stderr.write("progress")
exit_without_teardown(3 if hook != "full" else 0)
"""


def _exit_script(tmp_path: Path, hook: str = "ok", stdout=subprocess.PIPE):
    # Unbuffered output would hide a missing flush: the test runs with buffers, as a pipe has.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(tmp_path), hook],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        cwd=_REPO,
        env=env,
    )


def test_exit_without_teardown_finishes_threads_handlers_and_output(tmp_path: Path):
    """The fast exit still does what Python's exit does before freeing objects: joins
    threads, runs threading's hooks (Prefect's log queues) and atexit handlers, flushes."""
    proc = _exit_script(tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert (proc.stdout, proc.stderr) == ("result", "progress")
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "thread_hook").read_text() == "ran"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_exit_without_teardown_reports_a_failing_hook_and_keeps_the_code(tmp_path: Path):
    proc = _exit_script(tmp_path, hook="raises")
    assert proc.returncode == 3
    assert "RuntimeError: a hook failed" in proc.stderr
    assert proc.stdout == "result"
    assert (tmp_path / "atexit").read_text() == "ran"  # once: the hooks do not run twice


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_exit_without_teardown_fails_when_its_output_cannot_be_written(tmp_path: Path):
    """stdout on a full disk: the result never arrived, so the exit is not 0 (Python's 120)."""
    with open("/dev/full", "w") as full:
        proc = _exit_script(tmp_path, hook="full", stdout=full)
    assert proc.returncode == 120
    assert "lamflow: error: could not write stdout" in proc.stderr


def test_the_console_script_sets_malloc_up_before_the_command(monkeypatch):
    # lam.cpu_memory's arena setting only reaches threads that have not allocated yet, so the
    # entry applies it before main() starts any (a Dask worker's, Prefect's).
    import cli.main as cli_main

    calls: list[str] = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(cli_main, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(cli_main, "exit_without_teardown", lambda c: calls.append(f"exit {c}"))
    cli_main.entry()
    assert calls == ["malloc", "main", "exit 3"]


@pytest.mark.slow
def test_end_to_end_on_camvid(camvid: Path, tmp_path: Path, capsys):
    """One seed from drive 0006R0 labels frames of drive 0016E5 far better than chance."""
    frames = tmp_path / "val"
    (frames / "images").mkdir(parents=True)
    for f in sorted((camvid / "val" / "images").glob("*.jpg"))[:4]:
        shutil.copy(f, frames / "images" / f.name)
    model = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--images",
                str(camvid / "train/images"),
                "--labels",
                str(camvid / "train/labels"),
                "--classes",
                str(camvid / "classes.json"),
                "--seeds",
                "0006R0_f02640",
                "--out",
                str(model),
            ]
        )
        == 0
    )
    assert _annotate(model, str(frames / "images"), str(tmp_path / "out")) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "out"),
                "--labels",
                str(camvid / "val/labels"),
                "--classes",
                str(camvid / "classes.json"),
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 4
    assert scores["miou"] > 15  # chance on 11 classes is ~5; a real model is far above
    assert scores["per_class"]["road"]["iou"] > 60


def test_every_stage_has_one_generated_entry_and_alias(capsys) -> None:
    """`lamflow NAME` and `lamflow stage NAME` are the same parser, made from the table."""
    from cli.stages import STAGES, alias

    for name in STAGES:
        for argv in (["stage", name, "--help"], [alias(name), "--help"]):
            with pytest.raises(SystemExit) as done:
                main(argv)
            assert done.value.code == 0
        stage_help, alias_help = capsys.readouterr().out.split("usage:")[1:]
        assert stage_help == alias_help, name


def test_help_and_params_import_neither_torch_nor_prefect() -> None:
    """`lamflow --help`, `lamflow stage qc --help` and parsing params stay light (< 1 s)."""
    code = (
        "import sys, contextlib, io\n"
        "from cli.main import main\n"
        "from lamflow.params import load_params\n"
        "load_params('params.yaml')\n"
        "for argv in (['--help'], ['stage', 'qc', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'prefect', 'timm'})\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=_REPO, check=True
    )
    assert done.stdout.strip() == "", f"imported {done.stdout.strip()}"
