"""`source_model`: a segmentation model's own confident predictions as seed labels.

The model is usually the zero-seed mapped source network: a Cityscapes (or PASCAL) network
whose classes a class map head carries onto the target class list, built from no human label
(`lamflow train --no-seeds`, tasks/source_model.py). Unlike the other backends its weights are
published and small (lam.pretrained), so this is the backend that works offline.

Per pixel, the label is the predictor's argmax and the confidence its max softmax probability
over the target classes (lam.predictor.Annotator: the same numbers `annotate` writes); pixels
below `min_confidence` become void, so `train` learns only where the network is sure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lam.errors import LamflowError
from lam.modeling.lam import LabelAnythingModel
from lam.zero_shot.result import SeedLabel


class SourceModelSeeder:
    """Frame -> seed label from a built LabelAnythingModel.

    Args:
        model: the model; its class ids are the target ids (class c = names[c]).
        num_classes: number of target classes (must be the model's).
        ignore_index: the void id.
        min_confidence: pixels whose max class probability is below this become void.
        device: torch device of the predictor ('cpu', 'cuda', 'auto').
        model_version: the model's content version, for provenance.
        provenance: JSON-able facts about the model (class map, weights and their licence)
            the stage writes into its report.
    """

    def __init__(
        self,
        model: LabelAnythingModel,
        num_classes: int,
        ignore_index: int,
        min_confidence: float = 0.5,
        device: str = "cpu",
        model_version: str = "",
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        from lam.predictor import Annotator

        if int(model.num_classes) != int(num_classes):
            raise LamflowError(
                f"source_model: the model labels {model.num_classes} classes, the class list "
                f"has {num_classes}"
            )
        self.annotator = Annotator(model, device=device, batch_size=1)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.min_confidence = float(min_confidence)
        self.model_version = model_version
        self.provenance = {"model_version": model_version, **dict(provenance or {})}
        self.version = f"source_model:{model_version or 'unversioned'}:c{self.min_confidence}"

    def label_frame(self, image: np.ndarray) -> SeedLabel:
        """(H, W, 3) uint8 RGB -> its seed label; confidence = max softmax, 0 on void."""
        (pred,) = self.annotator.predict([image])
        confidence = pred.confidence.astype(np.float32) / 255.0
        label = pred.label.astype(np.uint8, copy=True)
        unsure = confidence < self.min_confidence
        label[unsure] = self.ignore_index
        confidence[unsure] = 0.0
        details = {
            "backend": "source_model",
            "model_version": self.model_version,
            "mean_model_confidence": round(float(pred.mean_confidence), 4),
            "void_below_min_confidence": round(float(unsure.mean()), 4),
        }
        return SeedLabel(label, confidence, details)


def build_source_model(
    names: Sequence[str],
    ignore_index: int,
    model: LabelAnythingModel | None = None,
    model_names: Sequence[str] | None = None,
    model_version: str = "",
    device: str = "cpu",
    min_confidence: float = 0.5,
    provenance: Mapping[str, Any] | None = None,
) -> SourceModelSeeder:
    """The seeder around a built `model` (tasks/zero_shot_seeds.py builds or loads it).

    model_names: the class names the model was built for, in id order; they must equal
    `names` (a model of another class list would write its ids as if they were ours).
    """
    if model is None:
        raise LamflowError(
            "source_model needs a model: set zero_shot_seeds.source_model_dir, or a "
            "source-network zero_shot_seeds.source_backbone / model.backbone"
        )
    if model_names is not None and list(model_names) != list(names):
        raise LamflowError(
            f"source_model: the model's classes {list(model_names)} are not the class list "
            f"{list(names)}"
        )
    return SourceModelSeeder(
        model, len(names), ignore_index, min_confidence, device, model_version, provenance
    )
