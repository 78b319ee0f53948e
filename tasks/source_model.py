"""The source-network side of `train`: weights, the class map in use, and what is reported.

A source-network backbone (espnetv2_city, dicenet_city, espnetv2_pascal) labels another
dataset's classes; training needs the map from those onto the target `classes.json` before it
builds the model (it is the head's prior), and reports which map was used, where it came from
and which weights (with their licence) the model stands on. The same zero-seed model labels
frames for `zero_shot_seeds` (backend source_model: `zero_seed_model`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from lam.artifact import CONFIG_FILE, model_to_files
from lam.build import SOURCE_NETWORKS, LamConfig, build_backbone, build_lam, source_network_weights
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.modeling.backbone import Backbone
from lam.modeling.class_map import ClassMapAdapter
from lam.modeling.lam import LabelAnythingModel
from lam.modeling.source_network import SOURCE_TAXONOMIES, SourceNetworkBackbone
from lam.pretrained import downloads_allowed, file_sha256, resolve_weights
from lam.vocabulary.taxonomy import UNMAPPED
from lam.vocabulary.wordnet import find_wordnet_dir
from lamflow.params import ModelParams, ZeroShotSeedsParams
from lamflow.storage import exists, join, read_bytes, sha256_bytes
from lamflow.weights import local_weights_path
from tasks.source_mapping import proposes_from_names, source_mapping_for

log = logging.getLogger(__name__)
SOURCE_NETWORK_BACKBONES: tuple[str, ...] = tuple(SOURCE_NETWORKS)


@dataclass
class ClassMapInUse:
    """The source -> target rows a model was built with, and where they came from."""

    taxonomy: str
    origin: str  # "vocabulary FILE" or "class names"
    rows: dict[str, str]  # source class -> target class or 'unmapped'
    row_sources: dict[str, str]  # source class -> 'manual', 'embedding', ...
    fitted: dict[str, dict[str, float]] = field(default_factory=dict)
    biases: dict[str, float] = field(default_factory=dict)  # target class -> fitted bias

    def mapped_targets(self) -> set[str]:
        return {t for t in self.rows.values() if t != UNMAPPED}

    def record_fitted(self, adapter: ClassMapAdapter) -> None:
        """Keep, per source class, the target classes its mass went to after training (the
        seeds move it from the name map; weights >= 0.05 only, rounded)."""
        names = self._targets
        self.biases = {n: round(float(b), 3) for n, b in zip(names, adapter.bias.tolist())}
        for s, source in enumerate(self.rows):
            column = adapter.mapping_matrix()[:, s].tolist()
            self.fitted[source] = {names[c]: round(w, 3) for c, w in enumerate(column) if w >= 0.05}

    def as_dict(self) -> dict[str, Any]:
        return {
            "taxonomy": self.taxonomy,
            "origin": self.origin,
            "rows": [
                {
                    "source_class": s,
                    "target": t,
                    "row_source": self.row_sources.get(s, ""),
                    "fitted": self.fitted.get(s, {}),
                }
                for s, t in self.rows.items()
            ],
            "biases": self.biases,
        }

    def table(self) -> str:
        """One line per source class: 'vegetation -> tree (embedding) fitted tree 0.93'."""
        width = max(len(s) for s in self.rows)
        lines = []
        for s, t in self.rows.items():
            fitted = ", ".join(f"{k} {v:.2f}" for k, v in self.fitted.get(s, {}).items())
            line = f"  {s:<{width}} -> {t} ({self.row_sources.get(s, '')})"
            lines.append(line + (f"  fitted: {fitted}" if fitted else ""))
        if any(self.biases.values()):
            lines.append(
                "  bias per target class (from the seeds): "
                + ", ".join(f"{k} {v:+.2f}" for k, v in self.biases.items())
            )
        return "\n".join(lines)

    _targets: list[str] = field(default_factory=list, repr=False)


def build_config(
    model: ModelParams, class_list: ClassList, vocabulary: str | None
) -> tuple[LamConfig, Backbone | None, ClassMapInUse | None]:
    """The model config for `model` params and `class_list`.

    For a source-network backbone this builds the backbone (finding and verifying its weights
    file) and the class map it needs: from the source_mapping rows of `vocabulary`, else of
    `model.vocabulary`, else proposed from the class names. Other backbones: (config, None,
    None); for them an explicit `vocabulary` is an error and `model.vocabulary` is ignored.
    """
    options = model.model_dump()
    weights = options.pop("weights")
    model_vocabulary = options.pop("vocabulary")
    if model.backbone not in SOURCE_NETWORKS:
        if vocabulary:
            raise LamflowError(
                f"--vocabulary maps a source network's classes; model.backbone "
                f"{model.backbone!r} has none (use one of {', '.join(SOURCE_NETWORKS)})"
            )
        return LamConfig(classes=class_list.to_json(), **options), None, None
    vocabulary = vocabulary or model_vocabulary or None
    if weights:
        options["backbone_options"] = {
            **options["backbone_options"],
            "weights": local_weights_path(weights),
        }
    backbone = build_backbone(model.backbone, options["backbone_options"])
    if not isinstance(backbone, SourceNetworkBackbone):
        raise LamflowError(f"backbone {model.backbone!r} built no source network")
    source_classes = backbone.source_classes
    taxonomy = backbone.taxonomy
    rows, origin = source_mapping_for(taxonomy, source_classes, list(class_list.names), vocabulary)
    mapping = ClassMapInUse(
        taxonomy,
        origin,
        {r.synset: r.target for r in rows},
        {r.synset: r.source for r in rows},
        _targets=list(class_list.names),
    )
    config = LamConfig(
        classes=class_list.to_json(),
        **options,
        source_mapping=mapping.rows,
        source_mapping_manual=[r.synset for r in rows if r.source == "manual"],
    )
    return config, backbone, mapping


def weights_provenance(backbone: Backbone | None) -> dict[str, str]:
    """The weights file, sha256, source URL and licence note of a source-network backbone."""
    return dict(getattr(backbone, "provenance", {}) or {})


def zero_seed_model_params(zs: ZeroShotSeedsParams, model: ModelParams) -> ModelParams:
    """The params the source_model backend builds its zero-seed model from: `model`, with
    `zs.source_backbone` as backbone when that is set and differs (then with that network's
    default options: `model.backbone_options` and `model.weights` belong to model.backbone)."""
    if not zs.source_backbone or zs.source_backbone == model.backbone:
        return model
    return model.model_copy(
        update={"backbone": zs.source_backbone, "backbone_options": {}, "weights": ""}
    )


def check_zero_seed_model(zs: ZeroShotSeedsParams, model: ModelParams) -> None:
    """One-line LamflowError, before any frame is read, when the source_model backend cannot
    label: no model at `source_model_dir`; else a backbone that is no source network, a
    `source_vocabulary` that does not exist, or (downloads off) weights found nowhere."""
    key = "zero_shot_seeds"
    if zs.source_model_dir:
        if not exists(join(zs.source_model_dir, CONFIG_FILE)):
            raise LamflowError(
                f"{key}.source_model_dir: no model at {zs.source_model_dir} "
                f"({CONFIG_FILE} not found)"
            )
        return
    params = zero_seed_model_params(zs, model)
    if params.backbone not in SOURCE_NETWORKS:
        raise LamflowError(
            f"source_model needs a source network to build the zero-seed model: set "
            f"{key}.source_backbone (or model.backbone, now {params.backbone!r}) to one of "
            f"{', '.join(SOURCE_NETWORKS)}, or {key}.source_model_dir to a model directory "
            "(docs/zero_shot.md)"
        )
    if zs.source_vocabulary and not exists(zs.source_vocabulary):
        raise LamflowError(f"{key}.source_vocabulary: {zs.source_vocabulary} does not exist")
    if not zs.source_vocabulary and model.vocabulary and not exists(model.vocabulary):
        raise LamflowError(f"model.vocabulary: {model.vocabulary} does not exist")
    explicit = params.weights or params.backbone_options.get("weights")
    if not downloads_allowed() and (not explicit or "://" not in str(explicit)):
        spec = source_network_weights(params.backbone, params.backbone_options.get("width"))
        resolve_weights(spec, str(explicit) if explicit else None, download=False)


def zero_seed_model_key(zs: ZeroShotSeedsParams, model: ModelParams) -> dict[str, object]:
    """What the source_model backend's labels depend on besides `zs` and the class list: the
    model directory's version, or the zero-seed model's params and the vocabulary's bytes."""
    if zs.source_model_dir:
        config = json.loads(read_bytes(join(zs.source_model_dir, CONFIG_FILE)))
        return {"model_version": str(config.get("version", ""))}
    params = zero_seed_model_params(zs, model)
    key: dict[str, object] = {"model": model_key_fields(params)}
    if zs.source_vocabulary:
        key["vocabulary_sha256"] = _file_sha256(
            zs.source_vocabulary, "zero_shot_seeds.source_vocabulary"
        )
    elif model.vocabulary:
        key["vocabulary_sha256"] = _file_sha256(model.vocabulary, "model.vocabulary")
    wordnet = mapping_wordnet_key(params, zs.source_vocabulary)
    if wordnet:  # its map's rows proposed from names use WordNet where it is installed
        key["wordnet_sha256"] = wordnet
    return key


def model_key_fields(model: ModelParams) -> dict[str, object]:
    """`model` as JSON for cache keys, without `vocabulary` when it is unset: a field added
    2026-12-07 must not change the key of every model trained before it (its bytes enter
    the key separately, `mapping_vocabulary_key`). `weights` is blanked: a weights file is
    verified against the registry's sha256, so moving it changes no model."""
    fields = model.model_dump(mode="json")
    if not fields.get("vocabulary"):
        fields.pop("vocabulary", None)
    # where the weights file lies is not what a model learns from: the file is checked
    # against the registry's sha256. "" keeps the keys of models that never set a path
    # (a fleet that did retrains once, then no more for a move)
    fields["weights"] = ""
    options = fields.get("backbone_options") or {}
    if "weights" in options:
        fields["backbone_options"] = {k: v for k, v in options.items() if k != "weights"}
    return fields


def mapping_vocabulary_key(model: ModelParams) -> str:
    """sha256 of `model.vocabulary`'s bytes for a source-network backbone ("" when none or
    another backbone): a corrected mapping row must change the nightly model's key."""
    if not model.vocabulary or model.backbone not in SOURCE_NETWORKS:
        return ""
    return _file_sha256(model.vocabulary, "model.vocabulary")


def mapping_wordnet_key(model: ModelParams, vocabulary: str | None = None) -> str:
    """sha256 of WordNet's `data.noun` when a source-network backbone's map proposes rows from
    names on a machine that has WordNet; "" otherwise (then keys stay what they were).

    Installing WordNet can change the proposed rows, so it must change the model's key. A
    map whose rows all come from a vocabulary file (`vocabulary`, else `model.vocabulary`)
    reads no WordNet, and its key does not depend on it.
    """
    if model.backbone not in SOURCE_NETWORKS:
        return ""
    folder = find_wordnet_dir()
    if folder is None:
        return ""
    taxonomy = SOURCE_NETWORKS[model.backbone][0]
    rows_from = vocabulary or model.vocabulary or None
    if not proposes_from_names(taxonomy, SOURCE_TAXONOMIES[taxonomy], rows_from):
        return ""
    return file_sha256(folder / "data.noun")


def _file_sha256(url: str, setting: str) -> str:
    """sha256 of the file a setting names; one-line LamflowError naming both when missing."""
    if not exists(url):
        raise LamflowError(f"{setting}: {url} does not exist")
    return sha256_bytes(read_bytes(url))


def zero_seed_model(
    zs: ZeroShotSeedsParams, model: ModelParams, class_list: ClassList
) -> tuple[LabelAnythingModel, list[str], str, dict[str, object]]:
    """The model the source_model backend labels with: (model, its class names in id order,
    its version, provenance for the report).

    From `zs.source_model_dir` when set (any trained model directory); else the zero-seed
    model `train --no-seeds` builds without unlabeled frames: the source network with its
    classes mapped onto `class_list` by name, or by `zs.source_vocabulary`'s rows, no label
    read, Cityscapes' normalisation statistics (a `train --no-seeds --unlabeled DROP` model
    adapted to the drop can be named in `zs.source_model_dir`).
    """
    if zs.source_model_dir:
        from tasks.model_io import load_model

        net, config = load_model(zs.source_model_dir)
        names = list(config.class_list.names)
        return net, names, config.version, {"model_dir": zs.source_model_dir}
    params = zero_seed_model_params(zs, model)
    config, backbone, mapping = build_config(params, class_list, zs.source_vocabulary or None)
    if mapping is None:  # check_zero_seed_model ran first: only a changed registry gets here
        raise LamflowError(f"backbone {params.backbone!r} built no source network")
    net = build_lam(config, backbone=backbone, seed=0).eval()
    model_to_files(net, config)  # sets config.version: the model's content hash, as saved
    version = config.version
    log.info("zero-seed model %s, class map (%s):\n%s", version, mapping.origin, mapping.table())
    provenance: dict[str, object] = {
        "backbone": params.backbone,
        "class_map": mapping.as_dict(),
        "weights": weights_provenance(backbone),
    }
    return net, list(class_list.names), version, provenance
