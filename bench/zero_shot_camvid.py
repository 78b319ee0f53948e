"""Seeds with no human label on CamVid: the source_model backend, and a model trained on them.

Through the stage functions the nightly flow uses (`zero_shot_seeds` -> `train --confidence`
-> `annotate` -> `evaluate`), no CamVid label read before scoring:

* zero-seed: the mapped source network itself (`train --no-seeds`, model.backbone
  espnetv2_city, classes mapped by name);
* zs-seeds + BACKBONE: `zero_shot_seeds` (backend source_model, the same zero-seed model)
  labels seed frames of drives 0001TP / 0006R0 (train split), void below `min_confidence`;
  `train` fits BACKBONE's head on those labels weighted by their confidence.
* human + BACKBONE (`--human`): the same frames with their CamVid labels, for reference.

Every model labels CamVid val (drive 0016E5; `--every N` keeps every Nth frame) and is scored
by `evaluate`. Prints one JSON line per model and the seed labels' own accuracy.

    .venv/bin/python bench/zero_shot_camvid.py [--camvid PATH] [--frames N] [--every N]
        [--backbones efficientnet_lite0 espnetv2_city] [--human] [--out DIR]

--frames 0 (default) uses params.yaml's train.seeds (6 frames, the nightly default); N > 0
uses N frames evenly spaced over the 0001TP and 0006R0 frames of the train split.
Measured (2-core CPU, CamVid val, default params): see docs/zero_shot.md, backend source_model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lam.imageio import decode_label  # noqa: E402
from lam.sampling import evenly_spaced  # noqa: E402
from lamflow.params import ModelParams, ZeroShotSeedsParams, load_params  # noqa: E402
from tasks.annotate import annotate  # noqa: E402
from tasks.evaluate import evaluate  # noqa: E402
from tasks.train import train  # noqa: E402
from tasks.zero_shot_seeds import zero_shot_seeds  # noqa: E402


def _subset(src: Path, stems: list[str], dst: Path) -> Path:
    """Symlinks of `src`/STEM.* for `stems` in `dst` (a folder the stages can list)."""
    dst.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (found,) = src.glob(f"{stem}.*")
        link = dst / found.name
        if not link.exists():
            link.symlink_to(found.resolve())
    return dst


def _seed_accuracy(zs: Path, labels: Path, used: list[str], ignore: int) -> dict[str, float]:
    """Pixel accuracy of the seed labels on their labelled pixels, and the share labelled."""
    right = labelled = total = 0
    for stem in used:
        seed = decode_label((zs / "labels" / f"{stem}.png").read_bytes())
        truth = decode_label((labels / f"{stem}.png").read_bytes())
        keep = (seed != ignore) & (truth != ignore)
        right += int((seed[keep] == truth[keep]).sum())
        labelled += int(keep.sum())
        total += int((truth != ignore).sum())
    return {
        "seed_pixel_accuracy": round(100 * right / max(1, labelled), 2),
        "seed_labelled_share": round(100 * labelled / max(1, total), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--camvid", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--min-confidence", type=float, default=0.5)
    ap.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "espnetv2_city"])
    ap.add_argument("--human", action="store_true", help="also train on the human labels")
    ap.add_argument("--out", default="/tmp/zero_shot_camvid")
    args = ap.parse_args()
    camvid, out = Path(args.camvid), Path(args.out)
    classes = str(camvid / "classes.json")
    params = load_params(str(ROOT / "params.yaml"))
    train_images = camvid / "train" / "images"
    if args.frames:
        pool = sorted(p.stem for p in train_images.iterdir() if p.stem[:6] in ("0001TP", "0006R0"))
        stems = evenly_spaced(pool, args.frames)
    else:
        stems = list(params.train.seeds)
    val = sorted(p.stem for p in (camvid / "val" / "images").iterdir())[:: args.every]
    val_images = _subset(camvid / "val" / "images", val, out / "val_images")
    seed_images = _subset(train_images, stems, out / "seed_images")
    zs_params = ZeroShotSeedsParams(
        backend="source_model", source_backbone="espnetv2_city", min_confidence=args.min_confidence
    )
    started = time.perf_counter()
    report = zero_shot_seeds(str(seed_images), classes, str(out / "zs"), zs_params, progress=False)
    ignore = json.loads(Path(classes).read_text())["ignore_index"]
    used = list(report["used"])
    seeds = {
        "frames": stems,
        "used": used,
        "rejected": report["rejected"],
        "seconds": round(time.perf_counter() - started, 1),
        **_seed_accuracy(out / "zs", camvid / "train" / "labels", used, ignore),
    }
    print(json.dumps({"zero_shot_seeds": seeds}), flush=True)

    runs: list[tuple[str, dict]] = [("zero-seed espnetv2_city", {"no_seeds": True})]
    for backbone in args.backbones:
        runs.append((f"zs-seeds + {backbone}", {"backbone": backbone, "zs": True}))
        if args.human:
            runs.append((f"human + {backbone}", {"backbone": backbone, "zs": False}))
    for name, run in runs:
        model_dir = out / "models" / name.replace(" ", "_").replace("+", "")
        shutil.rmtree(model_dir, ignore_errors=True)
        t0 = time.perf_counter()
        if run.get("no_seeds"):
            model = ModelParams(**{**params.model.model_dump(), "backbone": "espnetv2_city"})
            train(str(seed_images), "", classes, [], str(model_dir), model, params.train,
                  progress=False, no_seeds=True)  # fmt: skip
        else:
            model = ModelParams(**{**params.model.model_dump(), "backbone": run["backbone"]})
            labels = str(out / "zs" / "labels") if run["zs"] else str(camvid / "train" / "labels")
            train(str(seed_images), labels, classes, used if run["zs"] else stems,
                  str(model_dir), model, params.train, progress=False,
                  confidence=str(out / "zs" / "confidence") if run["zs"] else None)  # fmt: skip
        trained = time.perf_counter() - t0
        pred = out / "pred" / model_dir.name
        shutil.rmtree(pred, ignore_errors=True)
        annotate(str(model_dir), str(val_images), str(pred), params.annotate, progress=False)
        scores = evaluate(str(pred), str(camvid / "val" / "labels"), classes)
        per_class = {k: round(v["iou"], 1) for k, v in scores["per_class"].items()}
        line = {
            "model": name,
            "val_frames": len(val),
            "miou": round(scores["miou"], 2),
            "per_class_iou": per_class,
            "train_seconds": round(trained, 1),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
