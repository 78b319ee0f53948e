"""Annotation format converters (pure: arrays and bytes in, arrays and bytes out).

`coco` (RLE masks and a COCO JSON of a labeled drop), `cvat` (CVAT for images 1.1 XML with
polygons; Cityscapes-format zip) and `labelstudio` (tasks with brush RLE).
"""
