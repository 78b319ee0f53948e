"""The source-network side of `train`: weights, the class map in use, and what is reported.

A source-network backbone (espnetv2_city, dicenet_city, espnetv2_pascal) labels another
dataset's classes; training needs the map from those onto the target `classes.json` before it
builds the model (it is the head's prior), and reports which map was used, where it came from
and which weights (with their licence) the model stands on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lam.build import SOURCE_NETWORKS, LamConfig, build_backbone
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.modeling.backbone import Backbone
from lam.modeling.class_map import ClassMapAdapter
from lam.modeling.source_network import SourceNetworkBackbone
from lam.vocabulary.taxonomy import UNMAPPED
from lamflow.params import ModelParams
from lamflow.weights import local_weights_path
from tasks.source_mapping import source_mapping_for

SOURCE_NETWORK_BACKBONES: tuple[str, ...] = tuple(SOURCE_NETWORKS)


@dataclass
class ClassMapInUse:
    """The source -> target rows a model was built with, and where they came from."""

    taxonomy: str
    origin: str  # "vocabulary FILE" or "class names"
    rows: dict[str, str]  # source class -> target class or 'unmapped'
    row_sources: dict[str, str]  # source class -> 'manual', 'embedding', ...
    fitted: dict[str, dict[str, float]] = field(default_factory=dict)

    def mapped_targets(self) -> set[str]:
        return {t for t in self.rows.values() if t != UNMAPPED}

    def record_fitted(self, adapter: ClassMapAdapter) -> None:
        """Keep, per source class, the target classes its mass went to after training (the
        seeds move it from the name map; weights >= 0.05 only, rounded)."""
        names = self._targets
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
        }

    def table(self) -> str:
        """One line per source class: 'vegetation -> tree (embedding) fitted tree 0.93'."""
        width = max(len(s) for s in self.rows)
        lines = []
        for s, t in self.rows.items():
            fitted = ", ".join(f"{k} {v:.2f}" for k, v in self.fitted.get(s, {}).items())
            line = f"  {s:<{width}} -> {t} ({self.row_sources.get(s, '')})"
            lines.append(line + (f"  fitted: {fitted}" if fitted else ""))
        return "\n".join(lines)

    _targets: list[str] = field(default_factory=list, repr=False)


def build_config(
    model: ModelParams, class_list: ClassList, vocabulary: str | None
) -> tuple[LamConfig, Backbone | None, ClassMapInUse | None]:
    """The model config for `model` params and `class_list`.

    For a source-network backbone this builds the backbone (finding and verifying its weights
    file) and the class map it needs: from `vocabulary`'s source_mapping rows when given,
    else proposed from the class names. Other backbones: (config, None, None).
    """
    options = model.model_dump()
    weights = options.pop("weights")
    if model.backbone not in SOURCE_NETWORKS:
        if vocabulary:
            raise LamflowError(
                f"--vocabulary maps a source network's classes; model.backbone "
                f"{model.backbone!r} has none (use one of {', '.join(SOURCE_NETWORKS)})"
            )
        return LamConfig(classes=class_list.to_json(), **options), None, None
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
