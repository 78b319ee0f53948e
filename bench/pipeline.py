"""Benchmark the nightly flow against the `annotate` CLI on the same drop, like for like.

A drop of `--frames` frames (CamVid val frames repeated under new names) is labeled by
`lamflow annotate` (the baseline) and by `lamflow nightly` (ingest, sharded annotate on a Dask
LocalCluster, QC, export), `--repeats` times each, back to back in a changing order. A second
baseline, `stages`, does the flow's work without the flow: `lamflow stage ingest`, `annotate`,
`qc` and `export`, one process after the other, as a user (or `dvc repro`) runs them by hand;
`stages_ratio` = its seconds / the flow's (the cost of Prefect and Dask over the same work).
All are fresh subprocesses of the same command-line entry: each imports torch, loads the model
and reads, hashes and writes every frame itself; no model cache is shared between repeats or
sides.
The Prefect API the flow reports to is started once beforehand (a deployment's server is
always up) and is not timed. The flow's per-drop vocabulary and DVC versioning are switched
off: the baseline does neither, and bench/vocabulary.py times the vocabulary on its own.
Reported (medians over the repeats, and each run): seconds and frames/s of each side (whole
processes), throughput ratio = CLI seconds / flow seconds (target >= 0.85), the same for the
stages baseline (`stages_ratio`, with each stage's seconds); the flow run's own
duration as Prefect records it (what the UI shows), and the process's time outside it
(`outside_run_seconds`: interpreter start-up and imports before the run, log drain and exit
after it); orchestration overhead = 1 - (annotate compute time / flow run duration) (target <=
10%; issue 3's definition, wall time of the flow), where annotate compute time = the time at
least one shard was inside `annotate` (the union of the shards' intervals), so ingest, QC,
export, artifacts and scheduling count as overhead; process_overhead, the same over the whole
process (start-up included); overhead_vs_cli = 1 - CLI seconds / flow seconds; and the drop's
steps (`steps`, from the drop summary). The model is trained once beforehand.

Both sides in one process instead was tried and dropped: there the flow's annotate ran 40-70%
slower than the same call made by the CLI side earlier in that process (measured here), so the
two interfere and the comparison is not like for like.

    .venv/bin/python bench/pipeline.py --frames 1000            # workers: one per 4 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

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


def flow_run_seconds(run_id: str) -> float:
    """The duration Prefect recorded for flow run `run_id` (Running to Completed)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    if run.start_time is None or run.end_time is None:
        raise SystemExit(f"flow run {run_id} has no start or end time: {run.state}")
    return (run.end_time - run.start_time).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", default=default_camvid())
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument(
        "--workers", type=int, default=0, help="Dask LocalCluster workers (0 = one per 4 cores)"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="0 = params annotate.shard_size, capped so that every worker gets at least two shards",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of the three sides (CLI, flow, stages); the medians are reported",
    )
    parser.add_argument("--iterations", type=int, default=100, help="training iterations (untimed)")
    parser.add_argument("--out", default="outputs/bench/pipeline")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    from flows.nightly import auto_workers

    args.workers = args.workers or auto_workers()
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
        "review.backend=none",  # the labeling flow alone (bench/loop.py measures the loop)
        "pipeline.vocabulary_per_drop=false",  # not in the baseline (bench/vocabulary.py)
        "versioning.enabled=false",  # not in the baseline
    ]
    shard_size = args.shard_size or load_params(args.params).annotate.shard_size
    # at least two shards per worker, or some workers would idle
    shard_size = min(shard_size, max(1, -(-args.frames // (2 * args.workers))))
    overrides.append(f"annotate.shard_size={shard_size}")
    params = load_params(args.params, overrides)
    print(f"building a {args.frames}-frame drop under {root}", file=sys.stderr)
    build_drop(camvid, root, args.frames)

    from tasks.models import ensure_model

    print("training the model (not timed)", file=sys.stderr)
    model = ensure_model(str(root), params)

    lamflow = str(Path(sys.executable).parent / "lamflow")
    images = str(root / "drops" / DRIVE / "images")

    def run_cli() -> float:
        cli_out = out / "cli"
        shutil.rmtree(cli_out, ignore_errors=True)
        cmd = [lamflow, "annotate", "--model", model["model"], "--images", images]
        cmd += ["--out", str(cli_out), "--no-progress", "--params", str(params_file), *set_args]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    def run_stages() -> tuple[float, dict[str, float]]:
        """The flow's four steps by hand: one `lamflow stage NAME` process after the other,
        each writing under out/stages (its own ingest manifest, labels, QC history, export).
        As in the flow, a drop that fails QC (exit status 1) is not exported."""
        work = out / "stages"
        shutil.rmtree(work, ignore_errors=True)
        labels, manifest = str(work / "labels"), str(work / "ingest.json")
        common = ["--params", str(params_file), *set_args]
        steps = {
            "ingest": ["ingest", "--drive", DRIVE, "--out", manifest, "--no-progress"],
            "annotate": ["annotate", "--model", model["model"], "--images", images]
            + ["--out", labels, "--no-progress"],
            "qc": ["qc", "--labels", labels, "--ingest", manifest, "--model", model["model"]]
            + ["--history", str(work / "qc_history.jsonl")],
            "export": ["export", "--labels", labels, "--model", model["model"]]
            + ["--dest", str(work / "export"), "--no-progress"],
        }
        seconds: dict[str, float] = {}
        for name, stage_args in steps.items():
            t0 = time.perf_counter()
            cmd = [lamflow, "stage", *stage_args, *common]
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
            seconds[name] = round(time.perf_counter() - t0, 2)
            if name == "qc" and done.returncode == 1:
                print("stages: the drop failed QC, not exported (as in the flow)", file=sys.stderr)
                break
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} exited with {done.returncode}")
        return sum(seconds.values()), seconds

    from flows.nightly import shared_prefect_api

    params_file = out / "params.yaml"  # the overrides, written once for every subprocess
    shutil.copyfile(args.params, params_file)
    set_args = [a for o in overrides for a in ("--set", o)]

    def run_flow() -> tuple[float, dict]:
        for sub in ("labels", "exports", "state"):
            shutil.rmtree(root / sub, ignore_errors=True)  # every repeat labels the whole drop
        cmd = [lamflow, "nightly", "--params", str(params_file), *set_args, "--drive", DRIVE]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        result = json.loads(done.stdout[done.stdout.find("{\n") :])  # the CLI's JSON result
        return seconds, {**result["drops"][DRIVE], "run_seconds": flow_run_seconds(result["run"])}

    # This machine's speed drifts by 2x within minutes (shared host), so the sides run back to
    # back, `--repeats` times, in an order reversed every other repeat and rotated every two
    # (each side's place, and which of two sides comes first, changes); each repeat gives one
    # ratio per baseline.
    runs = []
    with shared_prefect_api():
        sides = ("cli", "flow", "stages")
        for rep in range(args.repeats):
            turn = (rep // 2) % 3
            order = sides[turn:] + sides[:turn]
            if rep % 2:
                order = order[::-1]
            timing: dict = {}
            for which in order:
                print(f"[{rep + 1}/{args.repeats}] {which}", file=sys.stderr)
                if which == "cli":
                    timing["cli"] = run_cli()
                elif which == "stages":
                    timing["stages"], timing["stage_seconds"] = run_stages()
                else:
                    timing["flow"], timing["drop"] = run_flow()
            drop = timing["drop"]
            busy = drop["annotate_busy_seconds"]
            runs.append(
                {
                    "cli_seconds": round(timing["cli"], 2),
                    "flow_seconds": round(timing["flow"], 2),
                    "throughput_ratio": round(timing["cli"] / timing["flow"], 3),
                    "stages_seconds": round(timing["stages"], 2),
                    "stages_ratio": round(timing["stages"] / timing["flow"], 3),
                    "stage_seconds": timing["stage_seconds"],
                    "flow_run_seconds": round(drop["run_seconds"], 2),
                    "outside_run_seconds": round(timing["flow"] - drop["run_seconds"], 2),
                    "annotate_busy_seconds": round(busy, 2),
                    "orchestration_overhead": round(1 - busy / drop["run_seconds"], 4),
                    "process_overhead": round(1 - busy / timing["flow"], 4),
                    # the time the flow adds to the same labeling done by the CLI
                    "overhead_vs_cli": round(1 - timing["cli"] / timing["flow"], 4),
                    "steps": drop.get("step_seconds", {}),
                }
            )
    median = statistics.median
    cli_seconds = median(r["cli_seconds"] for r in runs)
    flow_seconds = median(r["flow_seconds"] for r in runs)
    report = {
        "frames": args.frames,
        "workers": args.workers,
        "shards": drop["shards"],
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "cli_frames_per_second": round(args.frames / cli_seconds, 3),
        "flow_frames_per_second": round(args.frames / flow_seconds, 3),
        "throughput_ratio": median(r["throughput_ratio"] for r in runs),
        "stages_frames_per_second": round(
            args.frames / median(r["stages_seconds"] for r in runs), 3
        ),
        "stages_ratio": median(r["stages_ratio"] for r in runs),
        "flow_run_seconds": median(r["flow_run_seconds"] for r in runs),
        "outside_run_seconds": median(r["outside_run_seconds"] for r in runs),
        "orchestration_overhead": median(r["orchestration_overhead"] for r in runs),
        "process_overhead": median(r["process_overhead"] for r in runs),
        "overhead_vs_cli": median(r["overhead_vs_cli"] for r in runs),
        "runs": runs,
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
