"""Benchmark the nightly flow against the `annotate` CLI on the same drop.

A drop of `--frames` frames (CamVid val frames repeated under new names) goes once through
`lamflow annotate` (one process, the baseline) and once through the nightly flow (ingest,
sharded annotate on a Dask LocalCluster, QC, export). Reported:
    total seconds, frames/s of both, throughput ratio (target >= 0.85), and
    orchestration overhead = 1 - (annotate compute time / flow wall time) (target <= 10%),
where annotate compute time = the time at least one shard was inside `annotate` (the union of
the shards' intervals), so ingest, QC, export, scheduling and start-up count as overhead.
The model is trained once beforehand (not timed); the Prefect API start-up is not timed.

    .venv/bin/python bench/pipeline.py --frames 1000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DO_NOT_TRACK", "1")

from lamflow.params import default_camvid, load_params  # noqa: E402
from lamflow.storage import list_images, read_bytes, write_bytes_atomic  # noqa: E402

DRIVE = "bench"


def build_drop(camvid: Path, root: Path, frames: int) -> int:
    """ROOT/drops/bench/images with `frames` CamVid val frames, repeated under new names."""
    source = list_images(str(camvid / "val/images"))
    data = {stem: read_bytes(url) for stem, url in source}
    images = root / "drops" / DRIVE / "images"
    for i in range(frames):
        stem, _ = source[i % len(source)]
        write_bytes_atomic(str(images / f"{stem}_r{i // len(source):03d}.jpg"), data[stem])
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", default=default_camvid())
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="Dask LocalCluster workers")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="0 = params annotate.shard_size, capped so that every worker gets at least two shards",
    )
    parser.add_argument("--iterations", type=int, default=100, help="training iterations (untimed)")
    parser.add_argument("--out", default="outputs/bench/pipeline")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    camvid = Path(args.camvid)
    if not (camvid / "classes.json").exists():
        print(f"CamVid not found at {camvid} (set --camvid or LAMFLOW_CAMVID)", file=sys.stderr)
        return 2
    out = Path(args.out)
    root = out / "root"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"data.root={root}",
        f"data.camvid={camvid}",
        f"train.iterations={args.iterations}",
        f"pipeline.dask_workers={args.workers}",
        "pipeline.overlays_per_drop=4",
    ]
    shard_size = args.shard_size or load_params(args.params).annotate.shard_size
    # at least two shards per worker, or some workers would idle
    shard_size = min(shard_size, max(1, -(-args.frames // (2 * args.workers))))
    overrides.append(f"annotate.shard_size={shard_size}")
    params = load_params(args.params, overrides)
    print(f"[1/4] building a {args.frames}-frame drop under {root}", file=sys.stderr)
    build_drop(camvid, root, args.frames)

    from tasks.models import ensure_model

    print("[2/4] training the model (not timed)", file=sys.stderr)
    model = ensure_model(str(root), params)

    print("[3/4] baseline: `lamflow annotate` on the same frames", file=sys.stderr)
    lamflow = str(Path(sys.executable).parent / "lamflow")
    cli_out = out / "cli"
    t0 = time.perf_counter()
    subprocess.run(
        [
            lamflow,
            "annotate",
            "--model",
            model["model"],
            "--images",
            str(root / "drops" / DRIVE / "images"),
            "--out",
            str(cli_out),
            "--params",
            args.params,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cli_seconds = time.perf_counter() - t0

    print(f"[4/4] nightly flow on a LocalCluster of {args.workers} worker(s)", file=sys.stderr)
    from flows.nightly import dask_runner, nightly, shared_prefect_api

    with shared_prefect_api():
        flow = nightly.with_options(task_runner=dask_runner("", args.workers))
        t0 = time.perf_counter()
        result = flow(params_file=args.params, overrides=overrides)
        flow_seconds = time.perf_counter() - t0
    drop = result["drops"][DRIVE]
    compute = drop["annotate_busy_seconds"]
    report = {
        "frames": args.frames,
        "workers": args.workers,
        "shards": drop["shards"],
        "cpu_count": os.cpu_count(),
        "cli_seconds": round(cli_seconds, 2),
        "cli_frames_per_second": round(args.frames / cli_seconds, 3),
        "flow_seconds": round(flow_seconds, 2),
        "flow_frames_per_second": round(args.frames / flow_seconds, 3),
        "throughput_ratio": round(cli_seconds / flow_seconds, 3),
        "annotate_busy_seconds": round(compute, 2),
        "annotate_cpu_seconds_all_shards": drop["compute_seconds"],
        "orchestration_overhead": round(1 - compute / flow_seconds, 4),
        "labeled": drop["labeled"],
        "quarantined": drop["quarantined"],
        "qc": drop["qc"],
        "targets": {"orchestration_overhead_max": 0.10, "throughput_ratio_min": 0.85},
    }
    (out / "pipeline.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
