"""The hand map of shared/weights/README.md: Cityscapes' 19 classes onto CamVid's 11.

A reference, not product code: the name-based proposal is measured against it, and the tests
that run the real network on CamVid score it with it (ESPNetv2 61.2 mIoU on CamVid val).
"""

CITYSCAPES_TO_CAMVID = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "building",
    "fence": "fence", "pole": "pole", "traffic light": "sign", "traffic sign": "sign",
    "vegetation": "tree", "terrain": "tree", "sky": "sky", "person": "pedestrian",
    "rider": "bicyclist", "car": "car", "truck": "car", "bus": "car", "train": "car",
    "motorcycle": "bicyclist", "bicycle": "bicyclist",
}  # fmt: skip
