"""Label Studio tasks with brush masks (`brushlabels`, `"format": "rle"`), export and import.

`labels_to_tasks` / `tasks_to_labels` are the file export and import; `review_task` and
`annotation_to_label` are the two ends of the live review loop (a task with the model's mask as
an editable prediction; one reviewer's brush strokes and keypoint clicks back to class ids).

Label Studio's brush RLE is its own format (label-studio-converter `brush.py`, after thi.ng's
rle-pack), not COCO RLE. The mask is an RGBA image flattened row-major, (H * W * 4) bytes, of
which import reads the alpha channel. The byte stream is a bit string:

    32 bits  number of values N
     5 bits  word size - 1 (8 bits per value)
    4 x 4 bits  run-length field sizes - 1 (3, 4, 8, 16)
    then per run:  1 bit "repeat"; 2 bits choosing a field size; (size) bits run length - 1;
                   then one 8-bit value (repeat) or that many 8-bit values (literal)
    zero bits pad to whole bytes (always at least one bit, as the reference encoder does)

We encode exactly as the reference encoder (repeats only: single values are a repeat flag 0
with length field 0), so exports are byte-identical to label-studio-converter's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import numpy as np

from lam.classes import ClassList
from lam.errors import LamflowError

_RLE_SIZES = (3, 4, 8, 16)


def _value_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return lengths, flat[starts]


def encode_brush_rle(values: np.ndarray, word_size: int = 8) -> list[int]:
    """Flat uint8 array (RGBA bytes of a mask) -> Label Studio brush RLE (list of byte ints)."""
    flat = np.asarray(values, dtype=np.uint8).reshape(-1)
    bits = [f"{flat.size:032b}", f"{word_size - 1:05b}"]
    bits += [f"{s - 1:04b}" for s in _RLE_SIZES]
    if flat.size:
        for length, value in zip(*_value_runs(flat)):
            length, v = int(length), f"{int(value):08b}"
            if length == 1:
                bits.append("0" + "00" + "000" + v)
            elif length <= 8:
                bits.append("1" + "00" + f"{length - 1:03b}" + v)
            elif length <= 16:
                bits.append("1" + "01" + f"{length - 1:04b}" + v)
            elif length <= 256:
                bits.append("1" + "10" + f"{length - 1:08b}" + v)
            else:
                while length > 2**16:
                    bits.append("1" + "11" + f"{2**16 - 1:016b}" + v)
                    length -= 2**16
                bits.append("1" + "11" + f"{length - 1:016b}" + v)
    text = "".join(bits)
    text += "0" * (8 - len(text) % 8)
    return np.packbits(np.frombuffer(text.encode("ascii"), np.uint8) - 48).tolist()


class _Bits:
    def __init__(self, data: Sequence[int]) -> None:
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
        self.i = 0

    def read(self, n: int) -> int:
        if self.i + n > self.bits.size:
            raise LamflowError("brush RLE ends early (truncated or not Label Studio RLE)")
        out = 0
        for b in self.bits[self.i : self.i + n]:
            out = (out << 1) | int(b)
        self.i += n
        return out


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Label Studio brush RLE -> flat uint8 array of N values (N = H * W * 4 for a mask)."""
    stream = _Bits(rle)
    num = stream.read(32)
    word = stream.read(5) + 1
    sizes = [stream.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeat = stream.read(1)
        j = min(num, i + 1 + stream.read(sizes[stream.read(2)]))
        if repeat:
            out[i:j] = stream.read(word)
            i = j
        else:
            while i < j:
                out[i] = stream.read(word)
                i += 1
    return out


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> brush RLE of the RGBA image with 255 on all channels inside the mask."""
    if mask.ndim != 2:
        raise LamflowError(f"brush mask must be (H, W), got {mask.shape}")
    return encode_brush_rle(np.repeat(mask.astype(np.uint8).reshape(-1) * 255, 4))


def brush_rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Brush RLE -> (H, W) bool from the alpha channel (Label Studio paints RGBA)."""
    flat = decode_brush_rle(rle)
    if flat.size != height * width * 4:
        raise LamflowError(
            f"brush RLE holds {flat.size} values, expected H*W*4 = {height * width * 4}"
        )
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def _brush_results(
    stem: str,
    label: np.ndarray,
    classes: ClassList,
    from_name: str,
    to_name: str,
    confidence: np.ndarray | None = None,
    wanted: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """(H, W) uint8 ids -> one `brushlabels` result (0/255 RGBA brush RLE) per class present.

    With `confidence` ((H, W) uint8, 255 = certain) each result also carries `score`, the mean
    confidence of its pixels in [0, 1]. `wanted`: only these class names (a labeling config
    that lists fewer classes than the model has); None = every class.
    """
    h, w = label.shape
    results = []
    for cid in np.unique(label).tolist():
        if cid == classes.ignore_index or (wanted is not None and classes.names[cid] not in wanted):
            continue
        mask = label == cid
        result: dict[str, Any] = {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"{stem}/{cid}").hex[:10],
            "type": "brushlabels",
            "from_name": from_name,
            "to_name": to_name,
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": mask_to_brush_rle(mask),
                "brushlabels": [classes.names[cid]],
            },
        }
        if confidence is not None:
            total = int(confidence[mask].sum(dtype=np.uint64))
            result["score"] = round(total / max(1, int(mask.sum())) / 255.0, 6)
        results.append(result)
    return results


def prediction_results(
    stem: str,
    label: np.ndarray,
    confidence: np.ndarray,
    classes: ClassList,
    target: BrushTarget,
) -> list[dict[str, Any]]:
    """A model's (H, W) uint8 class ids and confidences -> the `result` list of one Label
    Studio prediction for the config's brush tag `target`: one region per class present that
    the tag lists, each with `score` = the mean confidence of its pixels (0..1)."""
    return _brush_results(
        stem, label, classes, target.from_name, target.to_name, confidence, target.labels
    )


@dataclass(frozen=True)
class BrushTarget:
    """The brush tag of a labeling config: `<BrushLabels name=from_name toName=to_name>` with
    its `<Label value=...>` names, on `<Image name=to_name value="$data_key">`."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]


def brush_target(label_config: str) -> BrushTarget:
    """The first `<BrushLabels>` tag of a Label Studio labeling config (XML).

    Raises LamflowError if the XML does not parse, has no BrushLabels tag, the tag lists no
    label, or its toName is not an `<Image>` whose value is `$key`.
    """
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as exc:
        raise LamflowError(f"labeling config is not valid XML: {exc}") from exc
    brush = next(root.iter("BrushLabels"), None)
    if brush is None:
        tags = sorted({el.tag for el in root.iter()} - {"View", "Label"})
        raise LamflowError(
            f"labeling config has no <BrushLabels> tag (it has {', '.join(tags) or 'none'}): "
            "lamflow predicts brush masks"
        )
    from_name, to_name = brush.get("name", ""), brush.get("toName", "")
    labels = tuple(str(el.get("value", "")) for el in brush.iter("Label"))
    if not labels:
        raise LamflowError(f"<BrushLabels name={from_name!r}> lists no <Label>")
    image = next((el for el in root.iter("Image") if el.get("name") == to_name), None)
    value = image.get("value", "") if image is not None else ""
    if not value.startswith("$"):
        raise LamflowError(
            f"<BrushLabels name={from_name!r}> points at toName={to_name!r}, which is not an "
            '<Image value="$key"> of the config'
        )
    return BrushTarget(from_name, to_name, value[1:], labels)


def labels_to_tasks(
    frames: Sequence[tuple[str, str, np.ndarray | None]],
    classes: ClassList,
    from_name: str = "tag",
    to_name: str = "image",
    as_predictions: bool = True,
) -> list[dict[str, Any]]:
    """Frames -> Label Studio tasks, one brush result per class present.

    Args:
        frames: (stem, image URL as Label Studio should load it, (H, W) uint8 ids or None);
            None exports the frame with no pre-annotation (a seed still to label).
        as_predictions: put masks under "predictions" (editable pre-annotations) rather
            than "annotations".
    """
    tasks = []
    for stem, image_url, label in frames:
        task: dict[str, Any] = {"data": {"image": image_url, "frame": stem}}
        if label is not None:
            results = _brush_results(stem, label, classes, from_name, to_name)
            key = "predictions" if as_predictions else "annotations"
            task[key] = [{"model_version": "lamflow", "result": results}]
        tasks.append(task)
    return tasks


def review_task(
    image_url: str,
    stem: str,
    drive: str,
    sha256: str,
    label: np.ndarray | None,
    classes: ClassList,
    model_version: str,
    score: float,
    reasons: list[str],
    from_name: str = "tag",
    to_name: str = "image",
) -> dict[str, Any]:
    """One task for the review push: the frame, why it needs review, and the model's mask.

    `data.sha256` (the frame's content hash) is how a later push or pull finds the task again;
    `score` goes on the prediction too, so Label Studio's "prediction score" column and our
    review-priority tab sort by it. `label` is (H, W) uint8 ids (void = classes.ignore_index)
    or None for a frame with nothing to pre-fill (the prediction then has an empty result).
    """
    results = [] if label is None else _brush_results(stem, label, classes, from_name, to_name)
    return {
        "data": {
            "image": image_url,
            "frame": stem,
            "drive": drive,
            "sha256": sha256,
            "reasons": "; ".join(reasons),
            "priority": float(score),
        },
        "predictions": [{"model_version": model_version, "score": float(score), "result": results}],
    }


def labeling_config(
    classes: ClassList, from_name: str = "tag", to_name: str = "image", point_name: str = "point"
) -> str:
    """Label Studio labeling config (XML): one brush label and one keypoint label per class.

    The keypoints (same names and colours) let a reviewer fix a small region with a click
    instead of painting it; `annotation_to_label` turns each click into a small disc.
    """
    labels = "\n".join(
        f'    <Label value="{n}" background="#{r:02x}{g:02x}{b:02x}"/>'
        for n, (r, g, b) in zip(classes.names, classes.colors)
    )
    return (
        f'<View>\n  <Image name="{to_name}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{from_name}" toName="{to_name}">\n{labels}\n'
        f"  </BrushLabels>\n"
        f'  <KeyPointLabels name="{point_name}" toName="{to_name}">\n{labels}\n'
        f"  </KeyPointLabels>\n</View>\n"
    )


def _class_id(res: dict[str, Any], key: str, classes: ClassList, where: str) -> int:
    names = res.get("value", {}).get(key) or []
    if len(names) != 1 or names[0] not in classes.names:
        raise LamflowError(f"{where}: {key} {names} must name one of {list(classes.names)}")
    return classes.names.index(names[0])


def _brush_mask(
    res: dict[str, Any], classes: ClassList, height: int, width: int, where: str
) -> tuple[int, np.ndarray]:
    """One `brushlabels` result -> (class id, (H, W) bool mask), errors prefixed by `where`."""
    cid = _class_id(res, "brushlabels", classes, where)
    value = res.get("value", {})
    if value.get("format") != "rle":
        raise LamflowError(f"{where}: only format 'rle' is read, got {value.get('format')!r}")
    try:
        return cid, brush_rle_to_mask(value["rle"], height, width)
    except LamflowError as exc:
        raise LamflowError(f"{where}: {exc}") from exc


def tasks_to_labels(tasks: Sequence[dict[str, Any]], classes: ClassList) -> dict[str, np.ndarray]:
    """Label Studio export (JSON list of tasks) -> {stem: (H, W) uint8 ids}.

    Reads each task's latest non-cancelled annotation (falling back to its predictions),
    paints brush results in order (later wins); pixels no brush covers are void. The stem is
    `data.frame` if present, else the image file name without its extension.
    """
    out: dict[str, np.ndarray] = {}
    for t, task in enumerate(tasks):
        data = task.get("data", {})
        stem = data.get("frame") or str(data.get("image", "")).rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if not stem:
            raise LamflowError(f"task {t}: no data.frame or data.image to name the frame")
        done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        source = done[-1:] or task.get("predictions", [])[-1:]
        if not source:
            continue
        label = None
        for r, res in enumerate(source[0].get("result", [])):
            if res.get("type") != "brushlabels":
                continue
            h, w = int(res["original_height"]), int(res["original_width"])
            if label is None:
                label = np.full((h, w), classes.ignore_index, dtype=np.uint8)
            cid, mask = _brush_mask(res, classes, h, w, f"task {t} ({stem}), result {r}")
            label[mask] = cid
        if label is not None:
            out[stem] = label
    return out


def annotation_to_label(
    result: list[dict[str, Any]],
    classes: ClassList,
    height: int,
    width: int,
    point_radius: int = 3,
) -> np.ndarray:
    """One Label Studio annotation's `result` list -> (H, W) uint8 class ids, void elsewhere.

    `brushlabels` and `keypointlabels` results are painted in their order (later wins); other
    result types are ignored. A keypoint (value.x / value.y in percent of the image width /
    height, origin top-left) becomes a disc of `point_radius` pixels around the clicked pixel:
    a reviewer's click means "this region is that class", so a few pixels of supervision.

    Raises LamflowError if a result was drawn on an image of another size than (height, width),
    names a class not in `classes`, or if nothing at all is painted (an empty submit must not
    become an all-void label that silently overrides the model).
    """
    label = np.full((height, width), classes.ignore_index, dtype=np.uint8)
    painted = np.zeros((height, width), dtype=bool)
    yy, xx = np.ogrid[:height, :width]
    for r, res in enumerate(result):
        kind = res.get("type")
        if kind not in ("brushlabels", "keypointlabels"):
            continue
        where = f"result {r} ({kind})"
        h = int(res.get("original_height", height))
        w = int(res.get("original_width", width))
        if (h, w) != (height, width):
            raise LamflowError(
                f"{where}: annotation is {h}x{w}, frame is {height}x{width} (height x width)"
            )
        if kind == "brushlabels":
            cid, mask = _brush_mask(res, classes, height, width, where)
        else:
            cid = _class_id(res, "keypointlabels", classes, where)
            value = res.get("value", {})
            try:
                px, py = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
            except (KeyError, TypeError, ValueError) as exc:
                raise LamflowError(f"{where}: value needs numeric x and y, got {value!r}") from exc
            cx = min(max(int(px), 0), width - 1)
            cy = min(max(int(py), 0), height - 1)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= point_radius**2
        label[mask] = cid
        painted |= mask
    if not painted.any():
        raise LamflowError(
            f"annotation paints no pixel ({len(result)} results, none a non-empty brush or "
            "keypoint): nothing to learn from"
        )
    return label
