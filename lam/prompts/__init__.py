"""Visual prompts -> seed masks: the prompt-file schema and the prompt segmenter backends.

Backends register lazily in `SEGMENTERS` ("sam" needs a checkpoint; "region_grow" needs no
weights). Every backend turns one frame's prompts into an (H, W) uint8 class map in which
unprompted pixels stay void.
"""

from lam.registry import Registry

SEGMENTERS = Registry("prompt segmenter")
SEGMENTERS.register(
    "sam",
    "lam.prompts.sam:SamSegmenter",
    "pip install segment-anything (and a checkpoint)",
    requires=["segment_anything"],
)
SEGMENTERS.register(
    "region_grow",
    "lam.prompts.region_grow:RegionGrowSegmenter",
    "pip install opencv-python-headless",
    requires=["cv2"],
)


def get_segmenter(name: str):
    """The segmenter class registered as `name` (ValueError lists the known names)."""
    return SEGMENTERS.get(name)
