"""Frames/s of the annotate path end to end vs the bare backbone forward, on the same frames.

annotate = JPEG decode + Annotator.predict (backbone, head, OptOU, full-res label and
confidence) + PNG encode of label and confidence. backbone = the frozen backbone's forward on
already decoded frames (the ceiling any head can reach). Prints JSON.

    .venv/bin/python bench/throughput.py [--camvid PATH] [--frames 24] [--batch 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lam.build import LamConfig, build_backbone, build_lam  # noqa: E402
from lam.predictor import Annotator  # noqa: E402


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    default_root = os.environ.get("LAMFLOW_CAMVID", str(ROOT / ".." / "shared" / "data" / "camvid"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", default=default_root)
    parser.add_argument("--backbone", default=LamConfig.backbone)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="best of n timed passes")
    args = parser.parse_args(argv)
    root = Path(args.camvid)
    if not (root / "classes.json").is_file():
        print(f"error: no CamVid at {root} (set --camvid or LAMFLOW_CAMVID)", file=sys.stderr)
        return 2
    classes = json.loads((root / "classes.json").read_text())
    config = LamConfig(classes=classes, backbone=args.backbone)
    model = build_lam(config, backbone=build_backbone(config.backbone, config.backbone_options))
    annotator = Annotator(model, device="cpu", batch_size=args.batch)
    paths = sorted((root / "val" / "images").glob("*.jpg"))[: args.frames]
    blobs = [p.read_bytes() for p in paths]
    decoded = [np.array(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    batches = [
        torch.from_numpy(np.stack(decoded[i : i + args.batch])).permute(0, 3, 1, 2)
        for i in range(0, len(decoded), args.batch)
    ]

    def annotate_pass() -> None:
        for s in range(0, len(blobs), args.batch):
            frames = [
                np.array(Image.open(io.BytesIO(b)).convert("RGB"))
                for b in blobs[s : s + args.batch]
            ]
            for pred in annotator.predict(frames):
                _png(pred.label)
                _png(pred.confidence)

    def backbone_pass() -> None:
        with torch.inference_mode():
            for batch in batches:
                model.extract(batch)

    annotator.predict(decoded[: args.batch])  # warm-up
    backbone_pass()
    timings = {}
    for name, fn in (("backbone", backbone_pass), ("annotate", annotate_pass)):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        timings[name] = len(blobs) / best
    print(
        json.dumps(
            {
                "frames": len(blobs),
                "size": list(decoded[0].shape[:2]),
                "threads": torch.get_num_threads(),
                "backbone_fps": round(timings["backbone"], 2),
                "annotate_fps": round(timings["annotate"], 2),
                "ratio": round(timings["annotate"] / timings["backbone"], 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
