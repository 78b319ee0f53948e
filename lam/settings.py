"""Every setting of the annotator as plain dataclasses: no torch, so parsing params is cheap.

`LamConfig` rebuilds a model (saved as its `config.json`); `TrainSettings` and `AdaptSettings`
are the hyperparameters of `lam.train` and `lam.adapt`. `lamflow.params` mirrors them as
validated params sections, and imports only this module (not torch or timm: `lamflow --help`
stays fast).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from lam.classes import ClassList
from lam.errors import LamflowError


@dataclass
class LamConfig:
    """Everything needed to rebuild an annotator (saved as `config.json` in the model directory).

    backbone_options by backbone:
      efficientnet_liteN: tap_blocks (list[int]), include_head (bool)
      timm: model_name (str), checkpoint (local file path or null), out_indices (list[int] | null)
      transformers: path (local directory with config + weights), layers (list[int])
    """

    classes: dict[str, Any]
    backbone: str = "efficientnet_lite0"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    out_stride: int = 4
    # Hidden ReLU units of the adapter; 0 = linear. Linear beat 128 hidden units on
    # bench/quality (5 seeds 41.65 vs 40.14 mIoU) and resizes 11 maps per tap, not 128.
    adapter_hidden: int = 0
    adapter_relu: bool = False
    adapter_pos_bumps: int = 0  # Gaussian bumps of the row coordinate fed to the adapter
    use_prototypes: bool = False
    # Unrolled OptOU steps. On bench/quality with the linear adapter 0, 1 and 3 steps score
    # 41.79, 41.89, 41.64 mIoU (5 seeds) and 1 step 33.37 vs 3 steps 33.98 (1 seed); each
    # step costs about 1.5 ms a frame on 2 cores, so one step is the default.
    optou_steps: int = 1
    optou_radius: int = 1
    optou_dilation: int = 2
    optou_sigma: float = 0.1
    # Source-network backbones (espnetv2_city, ...): source class -> target class or
    # 'unmapped', the prior of the class map head; sources a person set (never re-estimated).
    source_mapping: dict[str, str] = field(default_factory=dict)
    source_mapping_manual: list[str] = field(default_factory=list)
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_list(self) -> ClassList:
        return ClassList.from_json(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LamConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise LamflowError(f"model config has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainSettings:
    """Hyperparameters of seed training (all have working defaults)."""

    iterations: int = 60  # L-BFGS iterations of the adapter fit (Adam steps if optimizer="adam")
    lr: float = 0.01  # Adam only
    weight_decay: float = 1e-4  # L2 penalty on adapter weights, per sampled pixel
    batch_views: int = 4  # views per OptOU step
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    hflip: bool = True
    # weight_c = (median_freq / freq_c) ** power; 0 = unweighted. Chosen on the cross-drive
    # folds of bench/quality.py (6 other-drive seeds / + 4 same-drive frames, mean of the 3
    # target drives): 0.25 -> 39.95 / 46.05, 0.5 -> 41.36 / 47.19, 0.75 -> 41.71 / 46.82,
    # 1.0 -> 41.04 / 45.39 mIoU. Full weight floods thin classes (pole precision 6-11%).
    class_balance_power: float = 0.5
    seed: int = 0
    pixels_per_view: int = 8000  # labelled pixels sampled per view for the adapter fit
    max_pixels: int = 120000  # cap on all sampled pixels (per-view budget shrinks to fit)
    optimizer: str = "lbfgs"  # "lbfgs" or "adam"
    optou_iterations: int = 20  # Adam steps on OptOU's scalars (0 = keep their init)
    optou_lr: float = 0.05
    # What `train_head(unlabeled=...)` does with the target drives' unlabelled frames (their
    # labels are never read either way): "none" = nothing; "norm_stats" = the backbone's
    # BatchNorm statistics blended towards theirs before the seed fit (lam.norm_stats);
    # "self_train" = lam.adapt's class-balanced self-training after the seed fit. Which one
    # helps depends on the head (bench/quality.py folds, docs/annotator.md): with a source
    # network's class map, norm_stats gained in every case (params.yaml sets it); with
    # EfficientNet-Lite0 and a head learned from other drives' seeds it lost, as did
    # self-training, hence "none" here.
    unlabeled_method: str = "none"
    # unlabeled_method "norm_stats": how far every BatchNorm's running statistics of the
    # backbone move from the source's towards the unlabelled frames' (0 = not at all, 1 =
    # replaced; lam.norm_stats). 0.5 did best on the folds (zero seeds: 0.3 / 0.5 / 0.7 / 1.0
    # -> 56.86 / 57.24 / 56.09 / 51.83 against 54.45 unadapted).
    norm_blend: float = 0.5
    # Class map heads (source-network backbones): None keeps the name (or hand-edited) map as
    # it is; a number re-estimates it from the seed pixels, the name map counting as that many
    # pixels. Then a per-class bias is fitted on the seeds (class-balanced CE) if fit_bias.
    # On the cross-drive folds (6 seeds / + 4 same-drive frames, cached logits, docs/
    # annotator.md) re-estimating tied with the name map at strengths 300-3000 (within 0.7)
    # and lost 2-3 points from the seeds alone (0); the bias at power 0.25 gained 1.1 in the
    # loop case (+ 4 same-drive frames) and lost 0.4 with other-drive seeds only.
    class_map_prior: float | None = None
    class_map_fit_bias: bool = True
    # L2 penalty on those biases (per unit of the class-balanced cross-entropy): shrinks them
    # towards 0, i.e. towards trusting the network's own classes. With norm_stats, a few
    # other-drive seeds gave sky a bias of +3 (sky then took trees and buildings on val);
    # folds (cached adapted logits, docs/annotator.md): 0 / 0.01 / 0.03 / 0.1 -> 6 seeds
    # 57.59 / 58.09 / 57.95 / 57.73, 6 + 4 same-drive 58.26 / 58.31 / 58.05 / 57.75.
    class_map_bias_decay: float = 0.01


UNLABELED_METHODS = ("none", "self_train", "norm_stats")


@dataclass
class AdaptSettings:
    """Hyperparameters of self-training on a drop's unlabelled frames."""

    # Defaults chosen on bench/quality's 5-seed protocol over three seed draws (mean mIoU:
    # seeds only 45.09; 1 round / 24 frames / keep 0.5 45.72; 2 rounds / 48 / 0.3 45.89, and
    # 46.64 with the head interpolated half-way back to the seed-only head).
    max_frames: int = 48  # frames of the drop used (evenly spaced); the rest are not read
    keep_fraction: float = 0.3  # per predicted class, keep this most-confident fraction
    min_confidence: float = 0.5  # and never a pixel whose max softmax is below this
    pseudo_weight: float = 0.5  # weight of a pseudo-labelled pixel relative to a seed pixel
    pixels_per_frame: int = 2000
    rounds: int = 2  # label -> refit rounds (each round relabels with the refitted head)
    interpolate: float = 0.5  # final head = this * adapted + (1 - this) * seed-only head
    train: TrainSettings = field(default_factory=TrainSettings)
