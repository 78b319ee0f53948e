"""Inference wrapper: frames in, class maps and confidences out (batched, CPU or CUDA)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lam.cpu_fusion import inference_backbone
from lam.cpu_memory import keep_freed_memory
from lam.errors import LamflowError
from lam.modeling.lam import LabelAnythingModel
from lam.upsample import upsampled_label_and_confidence


@dataclass
class Prediction:
    """label: (H, W) uint8 class ids; confidence: (H, W) uint8, 255 = certain.

    confidence is the max softmax probability (exact where a class changes, interpolated from
    the output stride inside a class: see lam.upsample).
    """

    label: np.ndarray
    confidence: np.ndarray

    @property
    def mean_confidence(self) -> float:
        # An integer sum: numpy's mean of uint8 converts every pixel to float64 first.
        return int(self.confidence.sum(dtype=np.uint64)) / max(1, self.confidence.size) / 255.0

    def low_confidence_fraction(self, below: int = 128) -> float:
        """Share of pixels whose confidence is under `below` (of 255)."""
        return int(np.count_nonzero(self.confidence < below)) / max(1, self.confidence.size)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """(num_classes,) int64 pixels of each class id (ids from num_classes on not counted).

        numpy's, not torch's bincount, though torch's reads the uint8 map without numpy's
        int64 copy (0.13 against 0.24 ms a frame): annotate calls this on its I/O threads, and
        a torch op there made annotate slower as a whole (0.77 against 0.82 of the backbone's
        rate), as if each calling thread brought up threads of its own beside the model's.
        """
        return np.bincount(self.label.reshape(-1), minlength=num_classes)[:num_classes]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the host's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise LamflowError(f"unknown device {device!r}: {exc}") from exc


class Annotator:
    """Labels frames with a trained LabelAnythingModel.

    Never sees labels: the only inputs are the frames themselves (the leakage test in the suite
    checks predictions are identical whether label files exist or not). On CPU the backbone
    runs channels-last, and torch uses every core this process may run on.
    """

    def __init__(
        self, model: LabelAnythingModel, device: str = "auto", batch_size: int = 4
    ) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.model.backbone.to(memory_format=torch.channels_last)
        # Frozen-backbone copy with BatchNorm, activations and normalisation folded into the
        # convolutions (same taps to float rounding); the model itself is left untouched.
        self.backbone = inference_backbone(self.model.backbone).to(
            self.device, memory_format=torch.channels_last
        )
        self.batch_size = max(1, int(batch_size))
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on every batch's large tensors (lam.cpu_memory)
        if self.device.type == "cpu" and not os.environ.get("LAMFLOW_TORCH_THREADS"):
            # torch may count the host's cores, not the ones this process may use. A process that
            # shares the machine (a Dask worker: LAMFLOW_TORCH_THREADS) keeps its own setting:
            # overriding it would oversubscribe the cores.
            cores = usable_cores()
            if torch.get_num_threads() != cores:
                torch.set_num_threads(cores)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) uint8 on self.device -> the backbone taps (model.extract's values).

        Left channels-last, as the backbone writes them: the adapter works channels-last, so
        a copy to NCHW here would only be copied back there. On CUDA the backbone runs under
        float16 autocast (taps handed on as float32); on CPU in float32.
        """
        images = images.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":  # mixed precision: the frozen network in float16
            with torch.autocast("cuda", dtype=torch.float16):
                return [t.float() for t in self.backbone(images)]
        return list(self.backbone(images))

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Frames of one size, each (H, W, 3) uint8 RGB -> one Prediction each."""
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise LamflowError(f"predict_batch needs frames of one size, got {sorted(shapes)}")
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)
        low = self.model.head(self.features(batch), batch)  # (B, C, h, w) at the output stride
        label, conf = upsampled_label_and_confidence(low, tuple(batch.shape[-2:]))
        label_u8, conf_u8 = label.cpu().numpy(), conf.cpu().numpy()
        return [Prediction(label=lb, confidence=cf) for lb, cf in zip(label_u8, conf_u8)]

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Any number of frames (sizes may differ) -> predictions in input order."""
        out: list[Prediction | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise LamflowError(
                    f"frame {i}: expected (H, W, 3) uint8, got {im.shape} {im.dtype}"
                )
            by_shape.setdefault(im.shape, []).append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                for i, pred in zip(chunk, self.predict_batch([images[i] for i in chunk])):
                    out[i] = pred
        return [p for p in out if p is not None]
