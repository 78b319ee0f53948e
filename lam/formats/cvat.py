"""CVAT exchange: "CVAT for images 1.1" XML with polygons, and a Cityscapes-format zip.

Both import into CVAT as a task's annotations (Actions > Upload annotations), and CVAT's
exports in the same formats import back here as class-id maps.

Polygons: each 4-connected region of a class becomes one `<polygon>` tracing its boundary
pixels (XY in pixels, "x0,y0;x1,y1;..."). Regions are written in decreasing order of the area
their polygon fills, with increasing `z_order`, so a region nested inside another is painted
over it on import and labelled holes come back exactly; void (unlabelled) holes inside a region
are filled by the enclosing class, as polygons have no holes. Use the Cityscapes zip when void
holes must survive.

Cityscapes zip: `label_colors.txt` ("r g b name" per line, line 0 = background/void) and
`gtFine/default/STEM_gtFine_labelIds.png` (+ `_color.png`, `_instanceIds.png`), ids =
class id + 1, 0 = void — the layout CVAT's Cityscapes 1.0 importer (Datumaro) reads.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from xml.etree import ElementTree as ET

import cv2
import numpy as np

from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import decode_label, encode_png

_GT_DIR = "gtFine/default"
_LABEL_IDS = "_gtFine_labelIds.png"


def _at_least_three_points(contour: np.ndarray) -> np.ndarray:
    """(K, 2) XY boundary pixels -> (max(K, 3), 2) int32, the last point repeated for K < 3.

    A region of one or two pixels traces one or two points, and CVAT's importer (Datumaro)
    refuses a polygon of fewer than three points, failing the whole file. Repeating a point
    keeps those pixels: painted with its outline (as `cvat_xml_to_labels` paints), the polygon
    covers exactly them. A renderer that fills area only may show nothing for it.
    """
    contour = contour.astype(np.int32)
    if len(contour) >= 3:
        return contour
    return np.concatenate([contour, np.repeat(contour[-1:], 3 - len(contour), axis=0)])


def _regions(label: np.ndarray, classes: ClassList) -> list[tuple[int, int, np.ndarray]]:
    """[(filled area, class id, polygon (K, 2) int32 XY)] per 4-connected region, largest first.

    Sorting by the area the polygon *fills* (not the region's own pixel count) guarantees that
    a region enclosing another is painted before it, so holes come back exactly on import.
    """
    out = []
    for cid in np.unique(label).tolist():
        if cid == classes.ignore_index:
            continue
        n, comp = cv2.connectedComponents((label == cid).astype(np.uint8), connectivity=4)
        for k in range(1, n):
            contours, _ = cv2.findContours(
                (comp == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            for c in contours:
                filled = np.zeros(label.shape, dtype=np.uint8)
                cv2.fillPoly(filled, [c], 1)
                cv2.polylines(filled, [c], True, 1, 1)
                out.append((int(filled.sum()), cid, _at_least_three_points(c[:, 0, :])))
    out.sort(key=lambda t: -t[0])
    return out


def class_polygons(label: np.ndarray, classes: ClassList) -> list[tuple[int, np.ndarray]]:
    """(H, W) uint8 class ids -> [(class id, (K, 2) int32 XY polygon)], in painting order.

    One polygon per 4-connected region of a class (void left out), tracing its boundary pixels
    (at least three points: a one- or two-pixel region repeats its last point);
    painted in this order (z_order = index), later regions over earlier ones, they rebuild the
    map, labelled holes included (void holes are filled by the enclosing class). What the CVAT
    XML export writes, and what the CVAT function returns when asked for polygons.
    """
    return [(cid, poly) for _, cid, poly in _regions(label, classes)]


def labels_to_cvat_xml(
    frames: Sequence[tuple[str, np.ndarray | None]],
    classes: ClassList,
    size_hw: dict[str, tuple[int, int]] | None = None,
) -> bytes:
    """Frames -> CVAT for images 1.1 XML bytes.

    Args:
        frames: (image file name as uploaded to CVAT, (H, W) uint8 ids or None); None writes
            an empty `<image>` (a frame still to annotate) and needs its size in `size_hw`.
        size_hw: file name -> (H, W) for frames without labels.
    """
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    labels_el = ET.SubElement(meta, "labels")
    for name, (r, g, b) in zip(classes.names, classes.colors):
        lab = ET.SubElement(labels_el, "label")
        ET.SubElement(lab, "name").text = name
        ET.SubElement(lab, "color").text = f"#{r:02x}{g:02x}{b:02x}"
        ET.SubElement(lab, "type").text = "polygon"
        ET.SubElement(lab, "attributes")
    for idx, (name, label) in enumerate(frames):
        if label is None:
            if not size_hw or name not in size_hw:
                raise LamflowError(f"{name}: an unlabelled frame needs its size in size_hw")
            h, w = size_hw[name]
        else:
            h, w = label.shape
        img = ET.SubElement(root, "image", id=str(idx), name=name, width=str(w), height=str(h))
        if label is None:
            continue
        for z, (cid, poly) in enumerate(class_polygons(label, classes)):
            ET.SubElement(
                img,
                "polygon",
                label=classes.names[cid],
                source="auto",
                occluded="0",
                points=";".join(f"{x},{y}" for x, y in poly.tolist()),
                z_order=str(z),
            )
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def cvat_xml_to_labels(data: bytes, classes: ClassList) -> dict[str, np.ndarray]:
    """CVAT for images 1.1 XML -> {image name: (H, W) uint8 ids}.

    Polygons (and boxes, as filled rectangles) are painted in z_order, then document order;
    unpainted pixels are void. Images with no shape are left out (nothing was labelled).
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise LamflowError(f"CVAT XML does not parse: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for img in root.iter("image"):
        name = img.get("name", "")
        try:
            h, w = int(img.get("height", "")), int(img.get("width", ""))
        except ValueError as exc:
            raise LamflowError(f"CVAT image {name!r}: width/height missing") from exc
        shapes = [s for s in img if s.tag in ("polygon", "box")]
        if not shapes:
            continue
        label = np.full((h, w), classes.ignore_index, dtype=np.uint8)
        order = sorted(range(len(shapes)), key=lambda i: (int(shapes[i].get("z_order", 0)), i))
        for i in order:
            shape = shapes[i]
            cname = shape.get("label")
            if cname not in classes.names:
                raise LamflowError(
                    f"CVAT image {name!r}: label {cname!r} is not a class {list(classes.names)}"
                )
            cid = classes.names.index(cname)
            if shape.tag == "box":
                x0, y0 = float(shape.get("xtl", 0)), float(shape.get("ytl", 0))
                x1, y1 = float(shape.get("xbr", 0)), float(shape.get("ybr", 0))
                label[round(y0) : round(y1), round(x0) : round(x1)] = cid
                continue
            try:
                pts = [
                    tuple(float(v) for v in p.split(","))
                    for p in shape.get("points", "").split(";")
                ]
                poly = np.round(np.asarray(pts, dtype=np.float64)).astype(np.int32).reshape(-1, 2)
            except ValueError as exc:
                raise LamflowError(f"CVAT image {name!r}: bad polygon points ({exc})") from exc
            cv2.fillPoly(label, [poly], int(cid))
            cv2.polylines(label, [poly], True, int(cid), 1)
        out[name] = label
    return out


def labels_to_cityscapes_zip(frames: Sequence[tuple[str, np.ndarray]], classes: ClassList) -> bytes:
    """Frames (stem, (H, W) uint8 ids) -> Cityscapes-format zip bytes for CVAT."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1 : classes.num_classes + 1] = np.asarray(classes.colors, dtype=np.uint8)
    lines = ["0 0 0 background"] + [
        f"{r} {g} {b} {n}" for n, (r, g, b) in zip(classes.names, classes.colors)
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("label_colors.txt", "\n".join(lines) + "\n")
        for stem, label in frames:
            ids = np.where(label == classes.ignore_index, 0, label.astype(np.int32) + 1)
            if (label != classes.ignore_index).any() and label[
                label != classes.ignore_index
            ].max() >= classes.num_classes:
                raise LamflowError(f"{stem}: class id above {classes.num_classes - 1}")
            ids = ids.astype(np.uint8)
            zf.writestr(f"{_GT_DIR}/{stem}{_LABEL_IDS}", encode_png(ids))
            zf.writestr(f"{_GT_DIR}/{stem}_gtFine_instanceIds.png", encode_png(ids))
            zf.writestr(f"{_GT_DIR}/{stem}_gtFine_color.png", encode_png(palette[ids]))
    return buf.getvalue()


def cityscapes_zip_to_labels(data: bytes, classes: ClassList) -> dict[str, np.ndarray]:
    """Cityscapes-format zip (as CVAT exports it) -> {stem: (H, W) uint8 ids}.

    Label names come from `label_colors.txt` (position = id in labelIds); names that are not
    classes (e.g. "background") become void.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise LamflowError(f"not a zip archive: {exc}") from exc
    names = zf.namelist()
    colours = [n for n in names if n.endswith("label_colors.txt")]
    if not colours:
        raise LamflowError("Cityscapes zip has no label_colors.txt")
    lut = np.full(256, classes.ignore_index, dtype=np.uint8)
    for i, line in enumerate(zf.read(colours[0]).decode("utf-8").splitlines()):
        parts = line.split()
        if len(parts) < 4:
            continue
        name = " ".join(parts[3:])
        if name in classes.names:
            lut[i] = classes.names.index(name)
        elif i > 0 and name.lower() not in ("background", "void", "unlabeled"):
            raise LamflowError(
                f"label_colors.txt line {i}: {name!r} is not a class {list(classes.names)}"
            )
    out = {}
    for n in names:
        if n.endswith(_LABEL_IDS):
            stem = n.rsplit("/", 1)[-1][: -len(_LABEL_IDS)]
            out[stem] = lut[decode_label(zf.read(n), n)]
    return out
