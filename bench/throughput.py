"""Frames/s of the annotate path end to end vs the bare backbone forward, on the same frames.

annotate = JPEG decode (`lam.imageio.decode_image`) + Annotator.predict (backbone, head,
OptOU, full-res label and confidence) + PNG encode of label and confidence
(`lam.imageio.encode_png`), with tasks/annotate.py's thread pools. backbone = the frozen
backbone's forward exactly as annotate runs it (`Annotator.features`: the same optimised
module, same batch size) on the same, already decoded frames: the ceiling any head can reach.
The head is trained on one seed frame (`--seed`, default the first of params.yaml's seeds)
because its output decides the work after the backbone (lam.upsample resolves only pixels
near class changes); `--untrained` times a randomly initialised head instead, whose noisy
map takes the dense path (the worst case). backbone_unoptimised = the model's own `extract`
(the plain timm forward), for reference. Passes are interleaved (backbone, annotate,
unoptimised, backbone, ...) and each rate is the median over repeats, so load from other
processes hits all of them alike; `ratio_paired` is the median of the per-repeat ratios
(each from two back-to-back passes). Prints JSON (and writes it with --out).

    .venv/bin/python bench/throughput.py [--camvid PATH] [--frames 24] [--batch 4]
        [--seed STEM | --untrained] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lam.build import LamConfig, build_backbone, build_lam  # noqa: E402
from lam.classes import ClassList  # noqa: E402
from lam.imageio import decode_image, decode_label, encode_png  # noqa: E402
from lam.predictor import Annotator  # noqa: E402
from lam.train import train_head  # noqa: E402
from tasks.annotate import CPU_THREADS, IO_THREADS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get("LAMFLOW_CAMVID", str(ROOT / ".." / "shared" / "data" / "camvid"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", default=default_root)
    parser.add_argument("--backbone", default=LamConfig.backbone)
    parser.add_argument("--frames", type=int, default=24)
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
    classes = json.loads((root / "classes.json").read_text())
    config = LamConfig(classes=classes, backbone=args.backbone)
    model = build_lam(config, backbone=build_backbone(config.backbone, config.backbone_options))
    head = "untrained"
    if not args.untrained:
        seed_image = root / "train" / "images" / f"{args.seed}.jpg"
        seed_label = root / "train" / "labels" / f"{args.seed}.png"
        if not seed_image.is_file() or not seed_label.is_file():
            print(f"error: no train frame {args.seed!r} under {root}", file=sys.stderr)
            return 2
        image = decode_image(seed_image.read_bytes(), args.seed)
        label = decode_label(seed_label.read_bytes(), args.seed)
        train_head(model, [image], [label], ClassList.from_json(classes).ignore_index)
        head = f"trained on {args.seed}"
    annotator = Annotator(model, device="cpu", batch_size=args.batch)
    paths = sorted((root / "val" / "images").glob("*.jpg"))[: args.frames]
    blobs = [p.read_bytes() for p in paths]
    decoded = [decode_image(b) for b in blobs]
    batches = [
        torch.from_numpy(np.stack(decoded[i : i + args.batch])).permute(0, 3, 1, 2)
        for i in range(0, len(decoded), args.batch)
    ]

    def encode(pred) -> None:  # noqa: ANN001
        encode_png(pred.label)
        encode_png(pred.confidence)

    def annotate_pass() -> None:
        # As tasks/annotate.py runs it: reads prefetched by the I/O pool, JPEG decode and PNG
        # encodes through one CPU thread beside torch's, batches of frames through the model.
        with (
            ThreadPoolExecutor(max_workers=CPU_THREADS) as cpu,
            ThreadPoolExecutor(max_workers=IO_THREADS) as io,
        ):
            frames = io.map(lambda blob: cpu.submit(decode_image, blob).result(), blobs)
            pending = [
                io.submit(lambda p: cpu.submit(encode, p).result(), p)
                for batch in iter(lambda: list(islice(frames, args.batch)), [])
                for p in annotator.predict(batch)
            ]
            for fut in pending:
                fut.result()

    def backbone_pass() -> None:
        with torch.inference_mode():
            for batch in batches:
                annotator.features(batch)

    def unoptimised_pass() -> None:
        with torch.inference_mode():
            for batch in batches:
                model.extract(batch)

    passes = {
        "backbone": backbone_pass,
        "annotate": annotate_pass,
        "backbone_unoptimised": unoptimised_pass,
    }
    annotator.predict(decoded[: args.batch])  # warm-up
    backbone_pass()
    unoptimised_pass()
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(max(1, args.repeats)):
        for name, fn in passes.items():
            t = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t)
    fps = {name: len(blobs) / float(np.median(ts)) for name, ts in seconds.items()}
    result = {
        "frames": len(blobs),
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
        "ratio_paired": round(
            float(np.median(np.array(seconds["backbone"]) / np.array(seconds["annotate"]))), 3
        ),
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
