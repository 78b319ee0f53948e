"""SAM for zero-shot seeds: a mask per detection (box + points), and automatic masks.

Two implementations of each, behind one small interface, so a team can use whichever SAM
weights it has:
* segment-anything (`SamPredictor`, `SamAutomaticMaskGenerator`) from a `.pth` checkpoint;
* transformers `SamModel` + `SamProcessor` from a `save_pretrained` directory.

The LLM-refinement paper prompts SAM with the detector's box *and* the top-scoring points
inside it: the box alone lets SAM pick the wrong part (a window of a building, the road
under a car); points where the detector is most sure pin the object down.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lam.errors import LamflowError
from lam.registry import require
from lam.zero_shot.model_dir import check_model_dir


class BoxPointMasker(Protocol):
    version: str

    def masks(
        self, image: np.ndarray, boxes: Sequence[np.ndarray], points: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, float]]:
        """Per box (4,) XYXY and its (n, 2) XY positive points -> ((H, W) bool, SAM score)."""
        ...


def check_sam(sam: str, what: str, automatic: bool = False) -> None:
    """LamflowError in one line unless `sam` is a .pth file or (not `automatic`) a transformers
    SamModel directory; automatic masks need segment-anything's generator, so a .pth."""
    path = Path(sam).expanduser() if sam else None
    if path is not None and path.is_dir() and not automatic:
        check_model_dir(path, what, ("sam",))
        return
    if path is None or not path.is_file():
        kind = "a segment-anything .pth checkpoint" + ("" if automatic else " or a SamModel dir")
        if not sam:
            shown = "it is not set"
        elif path is not None and path.is_dir():
            shown = f"{sam!r} is a directory"
        else:
            shown = f"{sam!r} does not exist"
        raise LamflowError(f"{what} needs {kind}; {shown}")


def load_segment_anything(checkpoint: str, model_type: str = "vit_b", device: str = "cpu") -> Any:
    """A segment-anything `Sam` from a local checkpoint (LamflowError naming what is wrong)."""
    require("a SAM .pth checkpoint", ["segment_anything"], "pip install segment-anything")
    from segment_anything import sam_model_registry

    if not checkpoint:
        raise LamflowError("SAM needs a checkpoint: set sam to a local .pth file or directory")
    if not Path(checkpoint).is_file():
        raise LamflowError(f"SAM checkpoint not found: {checkpoint}")
    if model_type not in sam_model_registry:
        raise LamflowError(
            f"unknown SAM model_type {model_type!r}; known: {sorted(sam_model_registry)}"
        )
    try:
        sam = sam_model_registry[model_type](checkpoint=checkpoint)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:  # wrong model_type, bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LamflowError(
            f"SAM checkpoint {checkpoint} does not load as {model_type!r} "
            f"(is sam_model_type right? vit_h / vit_l / vit_b): {first[:200]}"
        ) from exc
    return sam.to(device).eval()


class SegmentAnythingMasker:
    """Box + points prompts through segment-anything's `SamPredictor`."""

    def __init__(self, sam: Any, version: str = "segment-anything") -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self.version = version

    @torch.inference_mode()
    def masks(
        self, image: np.ndarray, boxes: Sequence[np.ndarray], points: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, float]]:
        if not len(boxes):
            return []
        self.predictor.set_image(np.array(image), image_format="RGB")
        out = []
        for box, pts in zip(boxes, points):
            kwargs: dict[str, Any] = {"box": np.asarray(box, np.float32), "multimask_output": False}
            if len(pts):
                kwargs["point_coords"] = np.asarray(pts, np.float32).reshape(-1, 2)
                kwargs["point_labels"] = np.ones(len(kwargs["point_coords"]), np.int64)
            masks, scores, _ = self.predictor.predict(**kwargs)
            out.append((np.asarray(masks[0], bool), float(scores[0])))
        return out


class TransformersSamMasker:
    """Box + points prompts through transformers `SamModel` (one forward for all boxes)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        from transformers import SamModel, SamProcessor

        path = check_model_dir(model_dir, "sam", ("sam",))
        model: Any = SamModel.from_pretrained(path, local_files_only=True)
        self.model: Any = model.to(device).eval()
        self.processor: Any = SamProcessor.from_pretrained(path, local_files_only=True)
        self.device = device
        self.version = f"transformers-sam:{path.name}"

    @torch.inference_mode()
    def masks(
        self, image: np.ndarray, boxes: Sequence[np.ndarray], points: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, float]]:
        if not len(boxes):
            return []
        # SamProcessor nesting: boxes [image][box][4]; points [image][box][point][2]. Every
        # box needs the same number of points: shorter lists are padded with label -10, which
        # SamModel embeds as nothing (a padded point is not a click). With no point at all the
        # prompt is the boxes alone, as in the segment-anything path.
        n = max((len(p) for p in points), default=0)
        prompt: dict[str, Any] = {"input_boxes": [[list(map(float, b)) for b in boxes]]}
        if n:
            prompt["input_points"] = [
                [[list(map(float, q)) for q in p] + [[0.0, 0.0]] * (n - len(p)) for p in points]
            ]
            prompt["input_labels"] = [[[1] * len(p) + [-10] * (n - len(p)) for p in points]]
        inputs = self.processor(images=np.array(image), return_tensors="pt", **prompt).to(
            self.device
        )
        outputs = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )[0]  # (boxes, 1, H, W) bool
        scores = outputs.iou_scores.cpu()[0, :, 0]
        return [(masks[i, 0].numpy().astype(bool), float(scores[i])) for i in range(len(boxes))]


class SegmentAnythingAutoMasks:
    """segment-anything's `SamAutomaticMaskGenerator`: (H, W, 3) -> list of (H, W) bool."""

    def __init__(self, sam: Any, points_per_side: int = 32, version: str = "segment-anything"):
        from segment_anything import SamAutomaticMaskGenerator

        self.generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side)
        self.version = f"{version}:auto{points_per_side}"

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(m["segmentation"], bool) for m in self.generator.generate(image)]


def build_box_masker(sam: str, model_type: str = "vit_b", device: str = "cpu") -> BoxPointMasker:
    """`sam` a .pth file -> segment-anything; a directory -> transformers SamModel."""
    if sam and Path(sam).expanduser().is_dir():
        return TransformersSamMasker(sam, device)
    return SegmentAnythingMasker(
        load_segment_anything(sam, model_type, device), f"segment-anything:{Path(sam).name}"
    )


def build_auto_masks(
    sam: str, model_type: str = "vit_b", device: str = "cpu", points_per_side: int = 32
) -> SegmentAnythingAutoMasks:
    """Automatic masks need segment-anything's generator: `sam` must be a .pth checkpoint."""
    if sam and Path(sam).expanduser().is_dir():
        raise LamflowError(
            f"automatic SAM masks need a segment-anything .pth checkpoint, got directory {sam}"
        )
    return SegmentAnythingAutoMasks(
        load_segment_anything(sam, model_type, device),
        points_per_side,
        f"segment-anything:{Path(sam).name}",
    )
