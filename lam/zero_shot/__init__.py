"""Zero-shot seed labels: frames + a class list -> labels with no human (lam.zero_shot.*).

ZERO_SHOT names the backends (lazy, see lam.registry); each entry is a factory
`build(names, ignore_index, **options) -> ZeroShotSeeder` (lam.zero_shot.result). Backends:
grounded_sam (detector + SAM), maskclip (dense CLIP), source_model (a segmentation model,
usually the zero-seed mapped source network).
"""

from __future__ import annotations

from lam.registry import Registry

ZERO_SHOT = Registry("zero-shot seed backend")
ZERO_SHOT.register(
    "grounded_sam",
    "lam.zero_shot.grounded_sam:build_grounded_sam",
    "pip install transformers segment-anything (and local detector + SAM weights)",
    requires=["transformers"],  # segment_anything only for a .pth SAM (checked when built)
)
ZERO_SHOT.register(
    "maskclip",
    "lam.zero_shot.maskclip:build_maskclip",
    "pip install transformers (and a local CLIP directory)",
    requires=["transformers"],
)
ZERO_SHOT.register(
    "source_model",
    "lam.zero_shot.source_model:build_source_model",
    "nothing to install: a source-network backbone's weights (lam.pretrained) or a model dir",
)
