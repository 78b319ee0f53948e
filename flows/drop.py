"""One drop through the pipeline: ingest -> (adapt) -> sharded annotate -> qc -> export, with
its Prefect artifact. Composition only: every step is a stage task from `tasks/`."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait

from lam.errors import LamflowError
from lam.imageio import decode_image
from lamflow.params import Params
from lamflow.storage import join, list_dir, read_bytes
from tasks.adapt import adapted_model_url
from tasks.export import export_dest
from tasks.ingest import INGEST_MANIFEST, drop_url
from tasks.label_folder import drop_labels_url
from tasks.models import seed_sources
from tasks.seed_set import seed_set_url
from tasks.shards import busy_seconds, plan_shards
from tasks.vocabulary import VOCABULARY_FILE

from .runtime import import_in_background
from .stage_tasks import (
    adapt_task,
    annotate_manifest_task,
    annotate_shard_task,
    annotate_warm_up_task,
    export_task,
    ingest_task,
    qc_task,
    vocabulary_task,
)
from .state import is_accepted


def thumbnail_markdown(name: str, rgb: np.ndarray, size: int = 320) -> str:
    """(H, W, 3) uint8 RGB -> a markdown image of at most `size` px a side, as a JPEG data URI
    (Prefect artifacts are markdown and cannot link to files in ROOT)."""
    img = Image.fromarray(rgb)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70)
    return f"![{name}](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _thumbnails(out: str, limit: int) -> list[str]:
    """Overlay JPEGs under `out/overlays` as small data-URI markdown images."""
    names = list_dir(join(out, "overlays"))[:limit]
    return [
        thumbnail_markdown(n, decode_image(read_bytes(join(out, "overlays", n)), n)) for n in names
    ]


def drop_report(
    drive: str, qc: dict[str, Any], thumbs: list[str], exported: str | None = ""
) -> str:
    """Markdown summary of one drop: counts, mean confidence, class histogram, QC result."""
    hist = ", ".join(f"{k} {v:.1%}" for k, v in qc["class_histogram"].items() if v >= 0.005)
    failed = [c["column"] for c in qc["checks"] if not c["success"]]
    lines = [
        f"### Drop `{drive}` — QC **{qc['status']}**",
        "",
        "| frames | labeled | quarantined | review | mean confidence | drift | QC |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {qc['frames']} | {qc['labeled']} | {qc['quarantined']} | {qc['review']} | "
        f"{qc['mean_confidence']:.3f} | {qc['drift']:.3f} | {qc['status']}"
        f"{' (' + ', '.join(failed) + ')' if failed else ''} |",
        "",
        f"**Class histogram:** {hist}",
        "",
        f"**Exported to** `{exported}`."
        if exported
        else f"**Not exported:** QC failed. The next run labels the drop again; "
        f"`lamflow drop accept {drive}` publishes it as it is.",
        "",
        f"Model `{qc['model_version']}`.",
        "",
        *thumbs,
    ]
    return "\n".join(lines)


class _StepClock:
    """Wall seconds of each step of a drop, in order (the drop summary's `step_seconds`)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step] = round(now - self._last, 3)
        self._last = now


def published(summary: dict[str, Any]) -> bool:
    """A labeled drop is published (exported, done, versioned) unless its QC failed and no
    person accepted it."""
    return summary["qc"] != "fail" or bool(summary.get("accepted"))


def adapted_model(
    root: str, drive: str, images: str, model: dict[str, Any], params: Params
) -> dict[str, Any]:
    """`model` self-trained on this drop's frames (`pipeline.adapt_per_drop`), by the `adapt`
    stage, which reuses an adaptation an earlier (e.g. interrupted) run already made."""
    seeds = seed_set_url(root)  # the seed set the model was trained on
    out = adapted_model_url(root, model["model_version"], drive, params.adapt)
    report = adapt_task(
        model["model"],
        images,
        join(seeds, "images"),
        join(seeds, "labels"),
        out,
        params.adapt,
        progress=False,
    )
    return {
        **model,
        "model": out,
        "model_version": report["model_version"],
        "adapt_seconds": report["seconds"],
    }


def label_drop(
    root: str,
    drive: str,
    model: dict[str, Any],
    params: Params,
    still_ours: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """ingest -> (vocabulary) -> (adapt) -> sharded annotate -> qc -> export for one drop;
    returns its summary. `still_ours` raises when the drop's lease was lost: it is called
    before anything is published."""
    logger = get_run_logger()
    images = join(drop_url(root, drive), "images")
    clock = _StepClock()
    if params.pipeline.adapt_per_drop:
        manifest = ingest_task(root, drive, params.ingest, progress=False)
        clock.lap("ingest")
        model = adapted_model(root, drive, images, model, params)
        clock.lap("adapt")
        warm = annotate_warm_up_task.submit(model["model"], params.annotate)
    else:
        # Start the workers (they import torch and load the model) while the flow ingests.
        warm = annotate_warm_up_task.submit(model["model"], params.annotate)
        manifest = ingest_task(root, drive, params.ingest, progress=False)
        clock.lap("ingest")
    vocabulary_error = ""
    if params.pipeline.vocabulary_per_drop:  # which classes does the drop hold? (step 1)
        try:
            vocabulary_task(
                images,
                join(drop_url(root, drive), VOCABULARY_FILE),
                params.vocabulary,
                seed_sources(params)["classes"],
                progress=False,
                skip_existing=True,
            )
        except (LamflowError, ImportError) as exc:  # a backend that cannot run: reported
            # (a storage fault is not caught: the task retried it, and a drop that fails is
            # not done, so the next run labels it and makes its vocabulary again)
            vocabulary_error = f"{type(exc).__name__}: {exc}"
            logger.warning("drop %s: no vocabulary (%s); labeling goes on", drive, exc)
        clock.lap("vocabulary")
    out = drop_labels_url(root, model["model_version"], drive)
    shards = plan_shards([e["stem"] for e in manifest["entries"]], params.annotate.shard_size)
    first = params.annotate.model_copy(update={"write_overlays": params.pipeline.overlays_per_drop})
    rest = params.annotate.model_copy(update={"write_overlays": 0})
    futures = [
        annotate_shard_task.submit(model["model"], images, out, stems, first if i == 0 else rest)
        for i, stems in enumerate(shards)
    ]
    # QC's library takes 3-5 s of one core to import: loaded while the shards run and this
    # thread only waits (it imports nothing meanwhile), not at start-up nor in the middle of QC.
    import_in_background("great_expectations")
    wait(futures)  # every shard ends before a failure is raised: none writes on afterwards
    shard_results = [f.result() for f in futures]
    warm.result()
    clock.lap("annotate")
    counts = annotate_manifest_task(out)
    clock.lap("annotate_manifest")
    if counts["quarantined"]:
        logger.warning(
            "drop %s: %d frame(s) quarantined: %s",
            drive,
            len(counts["quarantined"]),
            "; ".join(f"{q['stem']}: {q['reason']}" for q in counts["quarantined"][:5]),
        )
    qc = qc_task(
        out,
        join(drop_url(root, drive), INGEST_MANIFEST),
        model["model"],
        "",
        params.qc,
        history=join(root, "state", "qc_history.jsonl"),
    )
    clock.lap("qc")
    accepted = qc["status"] == "fail" and is_accepted(root, drive)
    exported: dict[str, Any] = {"dest": None}
    if published({"qc": qc["status"], "accepted": accepted}):
        still_ours()  # a drop whose lease another run took over is not published by this one
        dest = export_dest(params.export, root, model["model_version"], drive)
        exported = export_task(out, model["model"], dest, params.export, progress=False)
        clock.lap("export")
    else:  # a failed drop is not published: the next run labels it again, or a person accepts
        logger.warning(
            "drop %s failed QC: not exported (`lamflow drop accept %s` to publish it)", drive, drive
        )
    create_markdown_artifact(
        key=f"drop-{drive}".lower().replace("_", "-").replace(".", "-"),
        markdown=drop_report(
            drive, qc, _thumbnails(out, params.pipeline.overlays_per_drop), exported["dest"]
        ),
        description=f"lamflow drop {drive}",
    )
    clock.lap("artifact")
    return {
        "drive": drive,
        "model": model["model"],
        "model_version": model["model_version"],
        "adapt_seconds": model.get("adapt_seconds"),
        "labels": out,
        "export": exported["dest"],
        "frames": manifest["frames"],
        "labeled": counts["labeled"],
        "quarantined": len(counts["quarantined"]),
        "qc": qc["status"],
        "accepted": accepted,
        "vocabulary_error": vocabulary_error,
        "shards": len(shards),
        "compute_seconds": round(sum(r["compute_seconds"] for r in shard_results), 3),
        "annotate_busy_seconds": round(busy_seconds([r["interval"] for r in shard_results]), 3),
        "step_seconds": clock.laps,
    }
