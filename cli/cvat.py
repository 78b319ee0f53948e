"""lamflow's model as a CVAT auto-annotation function (cvat-sdk 2.80, detection interface).

    cvat-cli --server-host URL task auto-annotate TASK_ID --function-module cli.cvat \\
        -p model=str:outputs/lamflow/dvc/model      # a model directory (any fsspec URL), or
        -p root=str:outputs/lamflow                 # the model the last nightly run labeled with

cvat-cli imports this module and calls `create(**params)` with the `-p` values (cvat_cli's
FunctionLoader). The function's `spec` declares one label of type "mask" per class of the
model; `detect` labels a frame with the Annotator `lamflow annotate` uses
(tasks.model_io.load_annotator, the same model cache) and returns one mask per class present,
in CVAT's mask encoding (cvat_sdk.masks.encode_mask): decoded and painted, the masks are the
label PNG annotate writes for that frame, pixel for pixel.

cvat-sdk matches the spec's labels to the task's by name (cvat_sdk.auto_annotation.driver).
A class the task has no label for stops the run before any frame is labeled, naming it
("label 'bicyclist' is not in dataset"); with `--allow-unmatched-labels` cvat-sdk drops that
class's masks and logs it, so those pixels stay unlabeled in CVAT. `--conf-threshold T` leaves
out the pixels whose confidence (annotate's confidence PNG / 255) is below T;
`--conv-mask-to-poly` returns polygons instead of masks: the ones `lamflow review-export
--format cvat` writes (lam.formats.cvat.class_polygons), with z_order so nested regions paint
over their surroundings (regions of one or two pixels, which make no polygon, are left out).

This module lives in cli/, the top layer, because it is an entry point of another command
line that needs both tasks/ (the model loader) and flows/ (the nightly run's model pointer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image

from lam.errors import LamflowError
from lam.formats.cvat import class_polygons
from lam.imageio import rgb_array
from lam.predictor import Annotator
from lamflow.params import AnnotateParams
from tasks.model_io import load_annotator
from tasks.model_pointer import published_model as read_pointer

try:
    import cvat_sdk.auto_annotation as cvataa
    import cvat_sdk.models as cvat_models
    from cvat_sdk.masks import encode_mask
except ImportError as exc:  # pragma: no cover - cvat-sdk is pinned in requirements.txt
    raise ImportError(
        "the CVAT function needs cvat-sdk: pip install cvat-sdk==2.80.0 (requirements.txt)"
    ) from exc


def published_model_dir(root: str) -> str:
    """URL of the model directory the last nightly run under `root` labeled with (the pointer
    ROOT/state/model.json, written by flows.state.write_model_pointer)."""
    url = str(read_pointer(root).get("model") or "")
    if not url:
        raise LamflowError(
            f"no published model under {root}: state/model.json is missing or names no model "
            "(run `lamflow nightly` first, or pass model=DIR)"
        )
    return url


class LamflowFunction:
    """A CVAT detection function around one trained model directory.

    spec: one `label_spec(name, id=class id, type="mask")` per class, in class-id order.
    detect(context, image): PIL image (any mode; CVAT's original-quality frame) -> one mask
    shape per class present (label_id = class id), or polygons when
    `context.conv_mask_to_poly`.
    """

    def __init__(self, model: str, device: str = "auto") -> None:
        self.model_url = model
        # The annotate stage's loader and batch size: the same model, folded the same way.
        self._annotator: Annotator
        self._annotator, config = load_annotator(model, device, AnnotateParams().batch_size)
        self.version = config.version
        self.classes = config.class_list
        self._spec = cvataa.DetectionFunctionSpec(
            labels=[
                cvataa.label_spec(name, cid, type="mask", color="#{:02x}{:02x}{:02x}".format(*rgb))
                for cid, (name, rgb) in enumerate(zip(self.classes.names, self.classes.colors))
            ]
        )

    @property
    def spec(self) -> cvataa.DetectionFunctionSpec:
        return self._spec

    def label_map(self, image: PIL.Image.Image, conf_threshold: float | None = None) -> np.ndarray:
        """(H, W) uint8 class ids of `image`, as annotate's label PNG; pixels whose confidence
        (uint8 / 255) is below `conf_threshold` are set to the void id (left unlabeled)."""
        (pred,) = self._annotator.predict([rgb_array(image)])
        if conf_threshold is None:
            return pred.label
        if not 0 <= conf_threshold <= 1:
            raise ValueError(f"conf_threshold must be in [0, 1], got {conf_threshold}")
        keep = pred.confidence / 255.0 >= conf_threshold
        return np.where(keep, pred.label, np.uint8(self.classes.ignore_index)).astype(np.uint8)

    def detect(
        self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image
    ) -> Sequence[cvat_models.LabeledShapeRequest]:
        try:
            label = self.label_map(image, context.conf_threshold)
        except OSError as exc:  # PIL: a truncated or unreadable frame
            raise LamflowError(f"{context.frame_name}: cannot decode image ({exc})") from exc
        if context.conv_mask_to_poly:
            return [
                cvataa.polygon(cid, poly.ravel().tolist(), z_order=z)
                for z, (cid, poly) in enumerate(class_polygons(label, self.classes))
            ]
        present = np.flatnonzero(np.bincount(label.reshape(-1), minlength=256))
        return [
            cvataa.mask(int(cid), encode_mask(label == cid))
            for cid in present
            if cid < self.classes.num_classes
        ]


def create(model: str = "", root: str = "", device: str = "auto") -> LamflowFunction:
    """cvat-cli's factory: `-p model=str:DIR` (a model directory) or `-p root=str:ROOT` (the
    model the nightly run under ROOT published), and optionally `-p device=str:cuda`."""
    if bool(model) == bool(root):
        raise ValueError(
            f"pass exactly one of model=DIR and root=ROOT (got model={model!r}, root={root!r})"
        )
    return LamflowFunction(model or published_model_dir(root), device=device)
