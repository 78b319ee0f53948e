"""The review loop, measured: how fast labels improve per human-labeled frame.

A real Label Studio (started here, on loopback) and the real nightly flow. A simulated reviewer
answers every pushed task with the CamVid ground truth of that frame, through Label Studio's
API, as a person's annotation.

* Start: the 6 `train.seeds` of params.yaml (drives 0006R0 and 0001TP).
* Drops: the train split's 204 frames of drive 0016E5 (one a second), in 4 consecutive chunks;
  night k's new drop is chunk k. Each night selects only from its own drop, and the flow
  relabels the earlier chunks with the new model (`review.backfill: all`).
* Run r (r = 1 .. N+1) pulls the answers to run r-1's tasks, retrains, relabels, labels chunk r
  (no new chunk in run N+1) and pushes B tasks. So after run r the model has learnt from
  r-1 nights of review: the row "night k" is run k+1 (night 0 = the 6 seeds alone).
* Scores after each night:
  - `drops`: every frame of the drops so far that is **not a seed** (the frames the reviewer
    labeled are seeds and are left out), as labeled by the flow;
  - `drops_night0_same_frames`: the same frames labeled by the night-0 model (like for like);
  - `val`: CamVid val (0016E5_07959-08159) labeled by a model trained on the seed set minus
    reviewer seeds closer than 300 frame numbers (10 s) to any val frame. Val is never a drop.
* Strategies: `active` (the product's selection) and `random` (B random frames per night),
  at budgets B = 2 and 5.
* Seconds per night: pull, train, push (from the flow's own report) and label (the rest of
  the flow run: relabel + label + QC + export + selection; Prefect/Dask overhead included).

    .venv/bin/python bench/loop.py [--camvid PATH] [--budgets 2 5] [--nights 4]
        [--strategies active random] [--out outputs/bench/loop]
Prints one JSON document; also writes it to OUT/loop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from lam.classes import ClassList  # noqa: E402
from lam.formats.labelstudio import review_task  # noqa: E402
from lam.imageio import decode_label  # noqa: E402
from lam.metrics import ConfusionAccumulator  # noqa: E402
from lamflow.params import default_camvid, load_params  # noqa: E402

DRIVE = "0016E5"
VAL_FIRST, VAL_LAST = 7959, 8159
MIN_GAP = 300  # frame numbers (10 s at 30 fps) between a reviewer seed and any val frame


def frame_number(stem: str) -> int:
    return int(stem.rsplit("_", 1)[-1].lstrip("f"))


def near_val(stem: str) -> bool:
    """A 0016E5 frame closer than MIN_GAP frame numbers to some val frame."""
    if not stem.startswith(DRIVE):
        return False
    n = frame_number(stem)
    return VAL_FIRST - MIN_GAP < n < VAL_LAST + MIN_GAP


def chunks(camvid: Path, n: int) -> list[list[str]]:
    stems = sorted(p.stem for p in (camvid / "train" / "images").glob(f"{DRIVE}_*.jpg"))
    size = -(-len(stems) // n)
    return [stems[i * size : (i + 1) * size] for i in range(n)]


def score_folder(
    pairs: list[tuple[Path, Path]], classes: ClassList, acc: ConfusionAccumulator | None = None
) -> ConfusionAccumulator:
    acc = acc or ConfusionAccumulator(classes.num_classes, classes.ignore_index, classes.names)
    for pred, gt in pairs:
        acc.update(
            decode_label(pred.read_bytes(), str(pred)), decode_label(gt.read_bytes(), str(gt))
        )
    return acc


def _scores(acc: ConfusionAccumulator) -> dict[str, Any]:
    s = acc.scores().as_dict()
    return {
        "miou": s["miou"],
        "mf1": s["mf1"],
        "frames": acc.n_images,
        "per_class_iou": {k: v["iou"] for k, v in s["per_class"].items()},
    }


def reviewer_answers(client: Any, push: dict[str, Any], camvid: Path, classes: ClassList) -> int:
    """Answer every task pushed this night with the frame's ground truth, as a person would."""
    answered = 0
    for record in push.get("drops", {}).values():
        for row in record.get("tasks", []):
            gt = decode_label((camvid / "train" / "labels" / f"{row['stem']}.png").read_bytes())
            result = review_task("", row["stem"], DRIVE, "", gt, classes, "gt", 0.0, [])
            client.create_annotation(int(row["task_id"]), result["predictions"][0]["result"])
            answered += 1
    return answered


def annotate_val(model: str, camvid: Path, out: Path, step: int) -> Path:
    from lamflow.params import AnnotateParams
    from tasks.annotate import annotate

    images = out / "val_images"
    if not images.exists():
        images.mkdir(parents=True)
        for p in sorted((camvid / "val" / "images").glob("*.jpg"))[::step]:
            (images / p.name).symlink_to(p.resolve())
    dest = out / "val_pred" / Path(model).name
    annotate(model, str(images), str(dest), AnnotateParams(), progress=False)
    return dest / "labels"


def val_model(root: Path, model: dict[str, Any], params: Any, out: Path) -> str:
    """The flow's model, unless a reviewer seed is near val: then one trained without those."""
    from tasks.seed_set import list_seeds
    from tasks.train import train

    prov = list_seeds(str(root / "seeds"))
    seeds = [str(p["stem"]) for p in prov]
    far = [str(p["stem"]) for p in prov if not near_val(str(p.get("frame") or p["stem"]))]
    if len(far) == len(seeds):
        return str(model["model"])
    dest = out / "val_models" / f"{model['model_version']}-far"
    if not (dest / "train_report.json").exists():
        train(
            str(root / "seeds" / "images"),
            str(root / "seeds" / "labels"),
            params.data.classes or str(Path(params.data.camvid) / "classes.json"),
            far,
            str(dest),
            params.model,
            params.train,
            progress=False,
        )
    return str(dest)


def _link_frames(camvid: Path, stems: list[str], dest: Path) -> Path:
    if not dest.exists():
        dest.mkdir(parents=True)
        for stem in stems:
            (dest / f"{stem}.jpg").symlink_to(
                (camvid / "train" / "images" / f"{stem}.jpg").resolve()
            )
    return dest


def night0(params: Any, camvid: Path, out: Path, stems: list[str]) -> tuple[Path, Path]:
    """The 6-seed model (trained once: the store is content-addressed, every config shares it)
    and its labels of every drop frame (the like-for-like night-0 score)."""
    from lamflow.params import AnnotateParams
    from tasks.annotate import annotate
    from tasks.models import ensure_model

    model = ensure_model(str(out / "night0_root"), params, progress=False)
    labels = out / "night0_labels"
    annotate(
        model["model"],
        str(_link_frames(camvid, stems, out / "chunks" / "all")),
        str(labels),
        AnnotateParams(),
        progress=False,
    )
    return Path(model["model"]), labels / "labels"


def _row(
    run: int,
    result: dict[str, Any],
    wall: float,
    root: Path,
    params: Any,
    camvid: Path,
    out: Path,
    night0_labels: Path,
    classes: ClassList,
    step: int,
) -> dict[str, Any]:
    from tasks.seed_set import list_seeds

    pull, push = result["review"]["pull"], result["review"]["push"]
    push_s = sum(float(r.get("seconds", 0.0)) for r in push.get("drops", {}).values())
    pull_s = float(pull.get("seconds", 0.0))
    report = json.loads((Path(result["model"]) / "train_report.json").read_text())
    train_s = float(report["seconds"]) if result["trained"] else 0.0
    # drop frames are named by their stem; a reviewer seed records it as `frame`
    seeds = {str(p.get("frame") or p["stem"]) for p in list_seeds(str(root / "seeds"))}
    pairs, pairs0 = [], []
    for drive_dir in sorted((root / "labels" / result["model_version"]).iterdir()):
        for png in sorted((drive_dir / "labels").glob("*.png")):
            if png.stem in seeds:
                continue
            gt = camvid / "train" / "labels" / png.name
            pairs.append((png, gt))
            pairs0.append((night0_labels / png.name, gt))
    vm = val_model(root, result, params, out)
    val_pred = annotate_val(vm, camvid, out, step)
    val_pairs = [(p, camvid / "val" / "labels" / p.name) for p in sorted(val_pred.glob("*.png"))]
    return {
        "night": run - 1,
        "reviewer_seeds": len(seeds) - len(params.train.seeds),
        "reviewer_seeds_used_for_val": sum(
            1 for s in seeds if s.startswith(DRIVE) and not near_val(s)
        ),
        "model_version": result["model_version"],
        "drops": _scores(score_folder(pairs, classes)),
        "drops_night0_same_frames": _scores(score_folder(pairs0, classes)),
        "val": _scores(score_folder(val_pairs, classes)),
        "seconds": {
            "pull": round(pull_s, 2),
            "train": round(train_s, 2),
            "push": round(push_s, 2),
            "label": round(wall - pull_s - train_s - push_s, 2),
            "flow": round(wall, 2),
        },
        "pushed": sum(len(r.get("tasks", [])) for r in push.get("drops", {}).values()),
    }


def run_config(
    strategy: str,
    budget: int,
    args: argparse.Namespace,
    client: Any,
    out: Path,
    night0_model: Path,
    night0_labels: Path,
) -> dict[str, Any]:
    """N+1 nightly runs of one (strategy, budget), each followed by the reviewer's answers."""
    from flows.nightly import dask_runner, nightly
    from tasks.ingest import add_drop

    camvid = Path(args.camvid)
    classes = ClassList.from_json(json.loads((camvid / "classes.json").read_text()))
    name = f"{strategy}-B{budget}"
    root = out / name
    shutil.rmtree(root, ignore_errors=True)
    overrides = [
        *base_overrides(args),
        f"data.root={root}",
        f"review.budget_per_drop={budget}",
        f"review.strategy={strategy}",
        f"review.project=bench-{name}-{int(time.time())}",
    ]
    params = load_params(args.params, overrides)
    shutil.copytree(night0_model, root / "models" / night0_model.name)
    parts = chunks(camvid, args.nights)
    flow = nightly.with_options(task_runner=dask_runner("", 1, processes=False))
    rows = []
    for run in range(1, args.nights + 2):
        if run <= args.nights:
            src = _link_frames(camvid, parts[run - 1], out / "chunks" / f"c{run}")
            add_drop(str(src), str(root), f"{DRIVE}-c{run}", progress=False)
        t0 = time.perf_counter()
        result = flow(params_file=args.params, overrides=overrides)
        wall = time.perf_counter() - t0
        row = _row(
            run, result, wall, root, params, camvid, out, night0_labels, classes, args.val_step
        )
        rows.append(row)
        brief = {k: row[k] for k in ("night", "reviewer_seeds", "seconds")}
        brief.update(drops=row["drops"]["miou"], val=row["val"]["miou"])
        print(json.dumps({"config": name, **brief}), file=sys.stderr, flush=True)
        if run <= args.nights:
            reviewer_answers(client, result["review"]["push"], camvid, classes)
    first, last = rows[0], rows[-1]
    return {
        "strategy": strategy,
        "budget": budget,
        "nights": rows,
        "gain_after_last_night": {
            "drops_vs_night0_same_frames": round(
                last["drops"]["miou"] - last["drops_night0_same_frames"]["miou"], 2
            ),
            "val": round(last["val"]["miou"] - first["val"]["miou"], 2),
        },
    }


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.camvid={args.camvid}",
        "review.backend=labelstudio",
        "review.backfill=all",
        "review.retries=0",
        "pipeline.overlays_per_drop=0",
        "pipeline.dask_workers=1",
    ]


def summarize(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per budget: each strategy's gain after the last night (drops: against the night-0 model
    on the same frames; val: against night 0), and whether the issue's targets are met
    (B = 5: drops +8, val +4, both above random's gains)."""
    out: dict[str, Any] = {}
    for budget in sorted({c["budget"] for c in configs}):
        by = {c["strategy"]: c for c in configs if c["budget"] == budget}
        row: dict[str, Any] = {
            s: {
                "drops_miou": c["nights"][-1]["drops"]["miou"],
                "drops_gain": c["gain_after_last_night"]["drops_vs_night0_same_frames"],
                "val_miou": c["nights"][-1]["val"]["miou"],
                "val_gain": c["gain_after_last_night"]["val"],
            }
            for s, c in by.items()
        }
        if "active" in row and "random" in row:
            a, r = row["active"], row["random"]
            row["active_beats_random"] = {
                "drops": a["drops_gain"] > r["drops_gain"],
                "val": a["val_gain"] > r["val_gain"],
            }
        if budget == 5 and "active" in row:
            a = row["active"]
            row["targets_met"] = {
                "drops_gain_ge_8": a["drops_gain"] >= 8,
                "val_gain_ge_4": a["val_gain"] >= 4,
                "beats_random": all(row.get("active_beats_random", {"x": False}).values()),
            }
        out[f"B{budget}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", default=default_camvid())
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--strategies", nargs="+", default=["active", "random"])
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--val-step", type=int, default=1, help="score every k-th val frame")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "loop"))
    parser.add_argument("--summarize", help="only print the summary of an earlier loop.json")
    args = parser.parse_args(argv)
    if args.summarize:
        print(
            json.dumps(summarize(json.loads(Path(args.summarize).read_text())["configs"]), indent=1)
        )
        return 0
    args.camvid = str(Path(args.camvid).resolve())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    from flows.nightly import shared_prefect_api
    from lamflow.labelstudio import LabelStudioServer
    from lamflow.labelstudio_api import LabelStudioClient

    camvid = Path(args.camvid)
    stems = [s for part in chunks(camvid, args.nights) for s in part]
    started = time.perf_counter()
    base = load_params(args.params, [*base_overrides(args), f"data.root={out / 'night0_root'}"])
    model0, labels0 = night0(base, camvid, out, stems)
    server = LabelStudioServer.with_free_port(out / "labelstudio").start()
    configs = []
    try:
        env = server.env()
        os.environ.update(env)
        client = LabelStudioClient(env["LABEL_STUDIO_URL"], env["LABEL_STUDIO_API_KEY"])
        with shared_prefect_api():
            for budget in args.budgets:
                for strategy in args.strategies:
                    configs.append(run_config(strategy, budget, args, client, out, model0, labels0))
    finally:
        server.stop()
    doc = {
        "bench": "loop",
        "drive": DRIVE,
        "nights": args.nights,
        "seed_frames_scored": "drops: frames that are not seeds (reviewer frames left out)",
        "val_rule": f"reviewer seeds >= {MIN_GAP} frame numbers from val {VAL_FIRST}-{VAL_LAST}",
        "summary": summarize(configs),
        "configs": configs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "loop.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
