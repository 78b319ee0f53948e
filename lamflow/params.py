"""Typed `params.yaml`: one section per stage, validated before any work starts.

Section name = stage name = `dvc.yaml` stage = Prefect task name. Unknown or mistyped keys fail
at load time with the dotted key named (`train.iterations: Input should be a valid integer`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lam.errors import LamflowError
from lam.settings import UNLABELED_METHODS, AdaptSettings, LamConfig, TrainSettings

DEFAULT_CAMVID = "../shared/data/camvid"


def default_camvid() -> str:
    """CamVid root: $LAMFLOW_CAMVID, else ../shared/data/camvid beside the repo."""
    return os.environ.get("LAMFLOW_CAMVID", DEFAULT_CAMVID)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataParams(_Section):
    """Where things live. `root` holds drops, models, labels and run state (any fsspec URL)."""

    root: str = "outputs/lamflow"
    camvid: str = Field(default_factory=default_camvid)
    classes: str = ""  # classes.json URL; empty = `<camvid>/classes.json`


# Defaults come from the lam dataclasses themselves, so params.yaml and the library cannot drift
# apart (tests/test_params.py also checks that every field is mirrored).
_MODEL = LamConfig(classes={"classes": [{"name": "_"}]})
_TRAIN = TrainSettings()
_ADAPT = AdaptSettings()


class ModelParams(_Section):
    """Architecture of the annotator (mirrors lam.build.LamConfig)."""

    backbone: str = _MODEL.backbone
    backbone_options: dict[str, Any] = Field(default_factory=dict)
    out_stride: int = Field(default=_MODEL.out_stride, ge=1, le=32)
    adapter_hidden: int = Field(default=_MODEL.adapter_hidden, ge=0)
    adapter_relu: bool = _MODEL.adapter_relu
    adapter_pos_bumps: int = Field(default=_MODEL.adapter_pos_bumps, ge=0)
    use_prototypes: bool = _MODEL.use_prototypes
    optou_steps: int = Field(default=_MODEL.optou_steps, ge=0, le=20)
    optou_radius: int = Field(default=_MODEL.optou_radius, ge=0, le=8)
    optou_dilation: int = Field(default=_MODEL.optou_dilation, ge=1, le=8)
    optou_sigma: float = Field(default=_MODEL.optou_sigma, gt=0)
    # source-network backbones: the weights file looked in first (a path or fsspec URL; then
    # $LAMFLOW_WEIGHTS, ../shared/weights/edgenets, the cache, the pinned URL)
    weights: str = ""
    # source-network backbones: a vocabulary.yaml (path or fsspec URL) whose source_mapping
    # rows map the network's classes onto classes.json, a person's corrections (manual rows)
    # included; "" = proposed from the class names. `train --vocabulary` overrides it; its
    # bytes enter the nightly model key, so an edited row retrains. The zero-seed labeller
    # uses it unless zero_shot_seeds.source_vocabulary is set. Other backbones ignore it.
    vocabulary: str = ""


class TrainParams(_Section):
    """Seed training (mirrors lam.train.TrainSettings, plus the seed list)."""

    seeds: list[str] = Field(default_factory=list)  # seed frame stems; empty = select_seeds output
    iterations: int = Field(default=_TRAIN.iterations, ge=1)
    lr: float = Field(default=_TRAIN.lr, gt=0)
    weight_decay: float = Field(default=_TRAIN.weight_decay, ge=0)
    batch_views: int = Field(default=_TRAIN.batch_views, ge=1)
    scales: list[float] = Field(default_factory=lambda: list(_TRAIN.scales), min_length=1)
    hflip: bool = _TRAIN.hflip
    class_balance_power: float = Field(default=_TRAIN.class_balance_power, ge=0)
    seed: int = _TRAIN.seed
    pixels_per_view: int = Field(default=_TRAIN.pixels_per_view, ge=1)
    max_pixels: int = Field(default=_TRAIN.max_pixels, ge=1)
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    optou_iterations: int = Field(default=_TRAIN.optou_iterations, ge=0)
    optou_lr: float = Field(default=_TRAIN.optou_lr, gt=0)
    # `train --unlabeled` frames: none (not read) | self_train (lam.adapt inside train) |
    # norm_stats (the backbone's BatchNorm statistics blended towards theirs: lam.norm_stats)
    unlabeled_method: str = _TRAIN.unlabeled_method  # one of lam.settings.UNLABELED_METHODS
    # frames read from the `--unlabeled` folders (evenly spaced; 0 = all); labels never read.
    # 48 = what self_train was measured with on the folds (lam.adapt's max_frames)
    unlabeled_frames: int = Field(default=48, ge=0)
    norm_blend: float = Field(default=_TRAIN.norm_blend, ge=0, le=1)
    class_map_prior: float | None = Field(default=_TRAIN.class_map_prior, ge=0)
    class_map_fit_bias: bool = _TRAIN.class_map_fit_bias
    class_map_bias_decay: float = Field(default=_TRAIN.class_map_bias_decay, ge=0)

    @field_validator("unlabeled_method")
    @classmethod
    def _unlabeled_method(cls, value: str) -> str:
        if value not in UNLABELED_METHODS:  # the one list lam.train checks too
            raise ValueError(f"{value!r} is not one of {', '.join(UNLABELED_METHODS)}")
        return value


class AdaptParams(_Section):
    """Optional self-training on a drop's own frames (mirrors lam.adapt.AdaptSettings; the refit
    reuses the model's own training settings, from its train_report.json)."""

    max_frames: int = Field(default=_ADAPT.max_frames, ge=1)
    keep_fraction: float = Field(default=_ADAPT.keep_fraction, gt=0, le=1)
    min_confidence: float = Field(default=_ADAPT.min_confidence, ge=0, le=1)
    pseudo_weight: float = Field(default=_ADAPT.pseudo_weight, gt=0)
    pixels_per_frame: int = Field(default=_ADAPT.pixels_per_frame, ge=1)
    rounds: int = Field(default=_ADAPT.rounds, ge=1)
    interpolate: float = Field(default=_ADAPT.interpolate, ge=0, le=1)


class AnnotateParams(_Section):
    """Labeling a drop."""

    batch_size: int = Field(default=4, ge=1)
    device: str = "auto"
    shard_size: int = Field(default=256, ge=1)
    write_overlays: int = Field(default=0, ge=0)  # overlay images for the first N frames
    skip_existing: bool = True


class IngestParams(_Section):
    """Registering a drop: which checks run on every frame before it is listed as usable."""

    # Every frame's header is parsed (format, size; bytes that are no image fail here). True
    # also decodes every frame fully, so a truncated file fails at ingest; `annotate` decodes
    # every frame anyway and quarantines one it cannot, so in the flow that is done twice.
    decode_check: bool = False
    io_threads: int = Field(default=4, ge=1, le=64)


class QcParams(_Section):
    """QC thresholds (tasks/qc.py): checks on the written outputs, read back, per frame and per
    drop. Hard checks fail the drop; soft ones (marked) only warn and list frames for review."""

    # per frame, from its record (soft)
    min_mean_confidence: float = Field(default=0.5, ge=0, le=1)
    max_low_confidence_fraction: float = Field(default=0.5, ge=0, le=1)
    # |statistic of the written PNGs - the record's| (confidence mean, fraction < 128, class
    # fractions); the record rounds to 1e-4, the PNG quantises confidence to 1/255
    record_tolerance: float = Field(default=0.01, gt=0, le=1)
    max_class_fraction: float = Field(default=0.95, gt=0, le=1)  # one class covers more: soft
    # robust z-score (median/MAD over the drop's frames) beyond which a frame is an outlier
    outlier_z: float = Field(default=3.5, gt=0)
    outlier_min_spread: float = Field(default=0.02, ge=0, le=1)  # floor of the z-score's scale
    outlier_min_frames: int = Field(default=5, ge=3)  # fewer labeled frames: outliers skipped
    # per drop
    max_drift: float = Field(default=0.35, ge=0, le=1)  # total variation vs the seeds' histogram
    max_history_drift: float = Field(default=0.25, ge=0, le=1)  # vs recent drops' mean (soft)
    history_drops: int = Field(default=10, ge=1)  # how many recent drops that mean covers
    absent_min_seed_fraction: float = Field(default=0.01, ge=0, le=1)  # seed classes checked
    absent_fraction: float = Field(default=0.0001, ge=0, le=1)  # below it a class is absent


class ExportParams(_Section):
    """Publishing labels: `png` = class-id PNGs, `color` = palette PNGs for humans."""

    format: Literal["png", "color"] = "png"
    include_confidence: bool = False
    dest: str = ""  # a drop goes to DEST/MODEL_VERSION/DRIVE_ID; empty DEST = ROOT/exports


class PipelineParams(_Section):
    """The nightly flow: schedule, Dask cluster, lease and seed locations."""

    schedule: str = "0 2 * * *"
    timezone: str = "UTC"
    dask_address: str = ""  # empty = a LocalCluster started by the flow
    dask_workers: int = Field(default=0, ge=0, le=256)  # 0 = one per 4 cores
    dask_processes: bool | None = None  # None = worker processes only when more than one worker
    lease_seconds: int = Field(default=3600, ge=10)
    overlays_per_drop: int = Field(default=4, ge=0, le=32)
    vocabulary_per_drop: bool = True  # the `vocabulary` stage on each new drop (then versioned)
    # labels: the first seeds are `train.seeds` of seed_images/seed_labels (human labels);
    # zero_shot: `zero_shot_seeds` labels those frames (all if train.seeds is empty)
    seed_source: Literal["labels", "zero_shot"] = "labels"
    seed_images: str = ""  # empty = <camvid>/train/images
    seed_labels: str = ""  # empty = <camvid>/train/labels
    sample_drive: str = "0016E5"  # the drop `dvc repro` builds from CamVid val
    # Self-train the model on each drop before labelling it (`adapt` section; minutes per drop)
    adapt_per_drop: bool = False


class VocabularyParams(_Section):
    """Vocabulary discovery (tasks/vocabulary.py, lam/vocabulary/): propose, filter, group, map."""

    backend: str = "imagenet-tagger"  # imagenet-tagger | clip | siglip | vlm
    model_dir: str = ""  # local transformers directory for clip / siglip / vlm
    views: Literal["full", "grid", "both"] = "both"
    top_k: int = Field(default=5, ge=1)
    min_prob: float = Field(default=0.02, ge=0, le=1)
    candidates: list[str] = Field(default_factory=list)  # clip/siglip; empty = ImageNet names
    template: str = "a photo of a {}."
    prompt: str = ""  # vlm; empty = lam.vocabulary.vlm_tagger.DEFAULT_PROMPT
    samples: int = Field(default=5, ge=1)
    top_p: float = Field(default=0.9, gt=0, le=1)
    temperature: float = Field(default=0.3, gt=0)
    repetition_penalty: float = Field(default=1.5, gt=0)
    combine: Literal["avg", "product", "min", "max"] = "avg"
    threshold: Literal["percentile", "probability", "both", "none"] = "percentile"
    percentile: float = Field(default=0.68, ge=0, le=1)
    probability: float = Field(default=0.68, ge=0, le=1)
    min_occurrences: int = Field(default=1, ge=1)
    frame_weighting: bool = True
    max_frames: int = Field(default=0, ge=0)  # 0 = all frames; else evenly spaced subset
    cluster_distance: float = Field(default=0.3, gt=0, lt=2)
    map_threshold: float = Field(default=0.5, ge=-1, le=1)
    wordnet_dir: str = ""  # empty = $WNSEARCHDIR or /usr/share/wordnet if present
    llm: Literal["", "transformers", "openai"] = ""
    llm_model_dir: str = ""
    llm_gguf_file: str = ""
    llm_url: str = ""
    llm_model: str = ""
    llm_refine_mapping: bool = True
    seed: int = 0


class SelectSeedsParams(_Section):
    """Seed selection (tasks/select_seeds.py, lam/seeds/): embed, de-duplicate, pick, cover."""

    budget: int = Field(default=5, ge=1)
    method: Literal["typiclust", "kcenter"] = "kcenter"
    dedupe_threshold: float = Field(default=0.9, gt=0, le=1.01)  # cosine; > 1 keeps all
    k_neighbors: int = Field(default=20, ge=1)
    backbone: str = "efficientnet_lite0"
    short_side: int = Field(default=224, ge=0)  # frames resized to this short side to embed
    # k-center's first seed: the frame most typical of the targets, or ("patches") the frame
    # whose (rows, cols) grid of patches on the last `patch_taps` taps best covers theirs
    start: Literal["typical", "patches"] = "typical"
    patch_grid: list[int] = Field(default_factory=lambda: [6, 8])
    patch_taps: int = Field(default=3, ge=1)
    coverage: bool = True  # add frames until every vocabulary class seen in the drop is seeded
    cache: str = ""  # embedding cache folder URL; empty = <dir of out>/embeddings
    seed: int = 0

    @field_validator("patch_grid")
    @classmethod
    def _grid(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or min(value) < 1:
            raise ValueError(f"patch_grid must be [rows, cols] of positive ints, got {value}")
        return value


class SeedMasksParams(_Section):
    """Seed masks from visual prompts (tasks/seed_masks.py, lam/prompts/)."""

    segmenter: Literal["sam", "region_grow"] = "region_grow"
    sam_checkpoint: str = ""  # local SAM .pth; required by segmenter "sam"
    sam_model_type: str = "vit_b"
    device: str = "cpu"
    backbone: str = "efficientnet_lite0"  # region_grow features ("" = colour only)
    threshold: float = Field(default=0.8, ge=-1, le=1)  # region_grow cosine threshold
    stride: int = Field(default=4, ge=1, le=32)
    skip_existing: bool = True


class ZeroShotSeedsParams(_Section):
    """Seed labels with no human (tasks/zero_shot_seeds.py, lam/zero_shot/, docs/zero_shot.md).

    Model paths are local (no hub): transformers `save_pretrained` directories, or a
    segment-anything .pth checkpoint for `sam`. Tags come from the `vocabulary` section's
    tagger and the LLM from its `llm*` keys, so one configuration serves both stages.
    """

    backend: Literal["grounded_sam", "maskclip", "source_model"] = "grounded_sam"
    detector_dir: str = ""  # grounded_sam: Grounding DINO or OWLv2 directory
    clip_dir: str = ""  # maskclip: CLIPModel directory
    sam: str = ""  # .pth (segment-anything) or SamModel directory; maskclip: optional auto masks
    sam_model_type: Literal["default", "vit_h", "vit_l", "vit_b"] = "vit_b"  # .pth only
    device: str = "cpu"
    box_threshold: float = Field(default=0.35, ge=0, le=1)  # grounded_sam
    text_threshold: float = Field(default=0.25, ge=0, le=1)  # grounded_sam (Grounding DINO)
    top_points: int = Field(default=3, ge=0, le=32)  # detector points added to SAM's box prompt
    nms_iou: float = Field(default=0.5, gt=0, le=1)
    use_llm: bool = True  # presence + pre-refinement through vocabulary.llm (if one is set)
    tags: bool = True  # the vocabulary tagger's tags feed the LLM (only used with an LLM)
    caption_model_dir: str = ""  # image-to-text directory for a caption ("" = no caption)
    names: dict[str, list[str]] = Field(default_factory=dict)  # manual phrases per class
    short_side: int = Field(default=0, ge=0)  # maskclip input short side (0 = model size)
    points_per_side: int = Field(default=32, ge=1, le=128)  # maskclip SAM automatic masks
    min_confidence: float = Field(default=0.5, ge=0, le=1)  # maskclip, source_model: -> void
    # source_model: a model directory (`train` output) labels the frames; "" = the zero-seed
    # model of source_backbone ("" = model.backbone; a source network, e.g. espnetv2_city), its
    # classes mapped by name or by source_vocabulary's source_mapping rows (a vocabulary.yaml)
    source_model_dir: str = ""
    source_backbone: str = ""
    source_vocabulary: str = ""
    min_labelled_fraction: float = Field(default=0.2, ge=0, le=1)  # frames below: not used
    min_mean_confidence: float = Field(default=0.4, ge=0, le=1)  # frames below: not used
    max_frames: int = Field(default=0, ge=0)  # 0 = every frame; else evenly spaced subset
    skip_existing: bool = True


_BACKFILL = re.compile(r"^(all|none|last [1-9][0-9]*)$")


class ReviewParams(_Section):
    """The review loop (tasks/review_select.py, tasks/review_sync.py): which frames of a drop
    a human sees, where (Label Studio, or review files), and what is relabeled afterwards."""

    # labelstudio: a Label Studio server at $LABEL_STUDIO_URL ($LABEL_STUDIO_API_KEY);
    # files: Label Studio JSON / CVAT XML written under ROOT/review/outbox; none: no review
    backend: Literal["labelstudio", "files", "none"] = "none"
    budget_per_drop: int = Field(default=5, ge=0)
    strategy: Literal["active", "random"] = "active"  # random: the baseline bench/loop compares
    project: str = "lamflow"  # Label Studio project title (one project per fleet)
    backfill: str = "all"  # drops relabeled after a retrain: all | none | last N
    point_radius: int = Field(default=3, ge=0, le=50)  # pixels around a reviewer's click
    uncertainty_weight: float = Field(default=1.0, ge=0)
    coverage_weight: float = Field(default=0.5, ge=0)
    dedupe_threshold: float = Field(default=0.95, gt=0, le=1.01)  # cosine: near-duplicate frames
    retries: int = Field(default=2, ge=0, le=10)  # per pull/push when the server fails
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    seed: int = 0  # random strategy only

    @field_validator("backfill")
    @classmethod
    def _backfill(cls, value: str) -> str:
        if not _BACKFILL.match(value):
            raise ValueError(f"backfill must be 'all', 'none' or 'last N', got {value!r}")
        return value

    def backfill_drops(self, drives: list[str]) -> list[str]:
        """The drops (oldest first) that a new model relabels, per `backfill`."""
        if self.backfill == "none":
            return []
        if self.backfill == "all":
            return list(drives)
        n = int(self.backfill.split()[1])
        return list(drives[-n:])


class VersioningParams(_Section):
    """What the nightly flow versions with DVC after each run (tasks/version.py): the seed set,
    the model, each drop's vocabulary and labels, one git commit per run in a workspace."""

    enabled: bool = True
    workspace: str = ""  # local git + DVC repo; "" = ROOT/versions (local ROOT) or .lamflow/...
    remote: str = ""  # DVC remote URL; "" = ROOT/dvc-store
    git_remote: str = ""  # push the workspace's commits and tags here after each run; "" = no


class Params(_Section):
    """All of params.yaml. Sections of stages added later default to empty sections."""

    data: DataParams = Field(default_factory=DataParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    adapt: AdaptParams = Field(default_factory=AdaptParams)
    annotate: AnnotateParams = Field(default_factory=AnnotateParams)
    ingest: IngestParams = Field(default_factory=IngestParams)
    qc: QcParams = Field(default_factory=QcParams)
    export: ExportParams = Field(default_factory=ExportParams)
    pipeline: PipelineParams = Field(default_factory=PipelineParams)
    vocabulary: VocabularyParams = Field(default_factory=VocabularyParams)
    select_seeds: SelectSeedsParams = Field(default_factory=SelectSeedsParams)
    seed_masks: SeedMasksParams = Field(default_factory=SeedMasksParams)
    review: ReviewParams = Field(default_factory=ReviewParams)
    zero_shot_seeds: ZeroShotSeedsParams = Field(default_factory=ZeroShotSeedsParams)
    versioning: VersioningParams = Field(default_factory=VersioningParams)


def _format_error(source: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse_params(data: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping; LamflowError names every bad key."""
    if data is not None and not isinstance(data, dict):
        raise LamflowError(
            f"{source}: top level must be a mapping of sections, got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data or {})
    except ValidationError as exc:
        raise LamflowError(_format_error(source, exc)) from exc


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read and validate `path`, then apply `section.key=value` overrides (YAML-typed values)."""
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise LamflowError(f"{path}: not valid YAML ({exc})") from exc
    elif str(path) != "params.yaml":
        raise LamflowError(f"params file not found: {path}")
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise LamflowError(f"override {item!r} must look like section.key=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise LamflowError(f"override {item!r}: {p} is not a section")
        node[leaf] = yaml.safe_load(value)
    return parse_params(data, str(path))
