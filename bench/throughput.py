"""Frames/s of the `annotate` stage end to end vs the bare backbone forward, on the same frames.

annotate = the stage function itself, `tasks.annotate.annotate`, on a folder of CamVid val
frames, into a fresh output folder each pass: reads, sha256, skip checks, JPEG decode, the
model (backbone, head, OptOU, full-resolution label and confidence), PNG encodes, atomic writes
of labels, confidence and per-frame records, and the manifest. backbone = the frozen backbone's
forward exactly as annotate runs it (`Annotator.features`: the same optimised module and batch
size) on the same frames, already decoded: the ceiling any head can reach. Both sides use the
process's cached model (tasks.model_io.load_annotator), built once before timing. The head is
trained on one seed frame (`--seed`) because its output decides the work after the backbone
(lam.upsample resolves only pixels near class changes); `--untrained` times a randomly
initialised head instead (the dense, worst case). predict = `Annotator.predict` on the same
decoded frames: the whole model (backbone, head, OptOU, full-resolution label and confidence)
with no reading, decoding, encoding or writing, so `ratio_predict_paired` is the ceiling of
`ratio_paired` on this machine and the gap between the two is annotate's I/O. The output
folder a pass wrote is deleted after its clock stops. backbone_unoptimised = the model's own
`extract` (its own forward, no folding), for reference. Passes are interleaved and each
rate is the median over repeats; the `*_paired` ratios are medians of per-repeat ratios
(back-to-back passes), so a drift of the machine's speed hits both sides. Prints JSON
(--out writes it).

    .venv/bin/python bench/throughput.py [--camvid PATH] [--frames 48] [--batch 4]
        [--seed STEM | --untrained] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lam.build import build_backbone, build_lam  # noqa: E402
from lam.imageio import decode_image, decode_label  # noqa: E402
from lam.train import train_head  # noqa: E402
from lamflow.params import AnnotateParams, load_params  # noqa: E402
from tasks.annotate import annotate  # noqa: E402
from tasks.frame_sources import load_classes  # noqa: E402
from tasks.model_io import load_annotator, save_model  # noqa: E402
from tasks.source_model import build_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get("LAMFLOW_CAMVID", str(ROOT / ".." / "shared" / "data" / "camvid"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", default=default_root)
    parser.add_argument("--backbone", default="", help="default: params.yaml model.backbone")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="median of n interleaved passes")
    parser.add_argument("--seed", default="0006R0_f03150", help="train frame the head fits")
    parser.add_argument(
        "--untrained", action="store_true", help="time a randomly initialised head instead"
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    root = Path(args.camvid)
    if not (root / "classes.json").is_file():
        print(f"error: no CamVid at {root} (set --camvid or LAMFLOW_CAMVID)", file=sys.stderr)
        return 2
    params = load_params(args.params, args.set)
    if args.backbone and args.backbone != params.model.backbone:
        # another network: params' options (width, input_size) belong to the configured one
        params.model.backbone_options = {}
        params.model.backbone = args.backbone
    # the model section of params.yaml, as `train` builds it (a source network's class map
    # from the class names, its weights found and checked)
    config, backbone, _ = build_config(params.model, load_classes(str(root / "classes.json")), None)
    model = build_lam(
        config, backbone=backbone or build_backbone(config.backbone, config.backbone_options)
    )
    head = "untrained"
    if not args.untrained:
        seed_image = root / "train" / "images" / f"{args.seed}.jpg"
        seed_label = root / "train" / "labels" / f"{args.seed}.png"
        if not seed_image.is_file() or not seed_label.is_file():
            print(f"error: no train frame {args.seed!r} under {root}", file=sys.stderr)
            return 2
        image = decode_image(seed_image.read_bytes(), args.seed)
        label = decode_label(seed_label.read_bytes(), args.seed)
        train_head(model, [image], [label], config.class_list.ignore_index)
        head = f"trained on {args.seed}"
    work = Path(tempfile.mkdtemp(prefix="lamflow-throughput-"))
    model_dir = str(work / "model")
    save_model(model_dir, model, config)
    annotator, _ = load_annotator(model_dir, "cpu", args.batch)  # the one annotate uses
    params = AnnotateParams(device="cpu", batch_size=args.batch, write_overlays=0)
    images = root / "val" / "images"
    paths = sorted(images.glob("*.jpg"))[: args.frames]
    stems = [p.stem for p in paths]
    decoded = [decode_image(p.read_bytes()) for p in paths]
    batches = [
        torch.from_numpy(np.stack(decoded[i : i + args.batch])).permute(0, 3, 1, 2)
        for i in range(0, len(decoded), args.batch)
    ]
    runs = iter(range(1_000_000))
    written: list[Path] = []  # output folders of finished passes, deleted outside the clock

    def annotate_pass() -> None:
        out = work / f"labels_{next(runs)}"  # fresh each pass: nothing is skipped
        summary = annotate(model_dir, str(images), str(out), params, stems=stems, progress=False)
        if summary.labeled != len(stems):
            raise RuntimeError(f"annotate labeled {summary.labeled} of {len(stems)} frames")
        written.append(out)

    def predict_pass() -> None:
        for i in range(0, len(decoded), args.batch):
            annotator.predict(decoded[i : i + args.batch])

    def backbone_pass() -> None:
        with torch.inference_mode():
            for batch in batches:
                annotator.features(batch)

    def unoptimised_pass() -> None:
        with torch.inference_mode():
            for batch in batches:
                model.extract(batch)

    # In this order, each pair of a `*_paired` ratio runs back to back (predict | backbone |
    # annotate).
    passes = {
        "predict": predict_pass,
        "backbone": backbone_pass,
        "annotate": annotate_pass,
        "backbone_unoptimised": unoptimised_pass,
    }
    for fn in passes.values():  # warm-up (all sides then run on the same cached annotator)
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(max(1, args.repeats)):
        for name, fn in passes.items():
            t = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t)
            while written:
                shutil.rmtree(written.pop())
    shutil.rmtree(work, ignore_errors=True)
    fps = {name: len(stems) / float(np.median(ts)) for name, ts in seconds.items()}

    def paired(numerator: str, denominator: str) -> float:
        ratios = np.array(seconds[numerator]) / np.array(seconds[denominator])
        return round(float(np.median(ratios)), 3)

    result = {
        "frames": len(stems),
        "size": list(decoded[0].shape[:2]),
        "batch": args.batch,
        "head": head,
        "threads": torch.get_num_threads(),
        "repeats": max(1, args.repeats),
        "backbone_fps": round(fps["backbone"], 2),
        "annotate_fps": round(fps["annotate"], 2),
        "ratio": round(fps["annotate"] / fps["backbone"], 3),
        # Median over repeats of backbone time / annotate time within one repeat: the two
        # passes run back to back, so a drift of the machine's speed (up to 1.5x between
        # minutes here) hits both; the ratio of the medians above mixes different moments.
        "ratio_paired": paired("backbone", "annotate"),
        "predict_fps": round(fps["predict"], 2),
        # The same for the model alone: what annotate would reach if reading, decoding,
        # encoding and writing cost nothing.
        "ratio_predict_paired": paired("backbone", "predict"),
        "backbone_unoptimised_fps": round(fps["backbone_unoptimised"], 2),
        "backbone_speedup": round(fps["backbone"] / fps["backbone_unoptimised"], 3),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
