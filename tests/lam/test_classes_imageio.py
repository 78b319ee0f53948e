"""Class lists and byte-level image decoding."""

import io
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from lam import imageio
from lam.classes import ClassList
from lam.errors import LamflowError
from lam.imageio import (
    decode_image,
    decode_label,
    encode_gray_png,
    encode_png,
    overlay,
    resize_label,
)


def test_class_list_round_trip(tiny_classes):
    cl = ClassList.from_json(tiny_classes)
    assert cl.names == ("sky", "road", "car") and cl.num_classes == 3
    assert ClassList.from_json(cl.to_json()) == cl
    assert tuple(cl.palette()[2]) == (64, 0, 128)


def test_class_list_rejects_gaps_duplicates_and_colliding_ignore():
    with pytest.raises(LamflowError, match="without gaps"):
        ClassList.from_json({"classes": [{"id": 0, "name": "a"}, {"id": 2, "name": "b"}]})
    with pytest.raises(LamflowError, match="not unique"):
        ClassList.from_json([{"name": "a"}, {"name": "a"}])
    with pytest.raises(LamflowError, match="collides"):
        ClassList.from_json({"ignore_index": 0, "classes": [{"name": "a"}]})


def test_check_label_names_bad_ids(tiny_classes):
    cl = ClassList.from_json(tiny_classes)
    cl.check_label(np.array([[0, 2, 255]], np.uint8))
    with pytest.raises(LamflowError, match=r"\[7\]"):
        cl.check_label(np.array([[0, 7]], np.uint8), where="x.png")


def test_png_round_trip_keeps_ids():
    lab = np.arange(60, dtype=np.uint8).reshape(6, 10)
    np.testing.assert_array_equal(decode_label(encode_png(lab)), lab)


def test_truncated_and_empty_images_fail_with_name():
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    assert decode_image(data).shape == (40, 40, 3)
    with pytest.raises(LamflowError, match="f1: cannot decode"):
        decode_image(data[: len(data) // 2], "f1")
    with pytest.raises(LamflowError, match="empty"):
        decode_image(b"", "f2")


def _jpeg(mode: str = "RGB", subsampling: int = 2, size: tuple[int, int] = (37, 53)) -> bytes:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", quality=85, subsampling=subsampling)
    return buf.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 chroma
def test_jpeg_decodes_to_pils_pixels(mode, subsampling, monkeypatch):
    """Colour JPEGs take the faster decoder, greyscale and CMYK ones PIL's conversion: every
    one comes out (H, W, 3) uint8 with exactly PIL's pixels (same IDCT, same chroma
    upsampling), on a noisy odd-sized frame where any difference would show."""
    data = _jpeg(mode, subsampling)
    fast = []
    real = imageio._decode_colour_jpeg
    monkeypatch.setattr(imageio, "_decode_colour_jpeg", lambda d: fast.append(real(d)) or fast[-1])
    got = decode_image(data)
    assert got.dtype == np.uint8 and got.shape == (37, 53, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _pil_rgb(data))
    if mode == "RGB":
        assert len(fast) == 1 and fast[0] is not None  # the fast decoder ran and was used
    else:
        assert fast == []


def test_jpeg_decodes_even_when_warnings_are_errors():
    """torchvision's decoder warns that it is deprecated; under -W error that warning raises
    inside it, and PIL decodes the frame instead."""
    data = _jpeg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(decode_image(data), _pil_rgb(data))


def test_oversized_jpegs_keep_pils_pixel_limit(monkeypatch):
    """A frame over PIL's pixel limit never reaches the fast decoder: over twice the limit it
    is refused with the frame's name (a decompression bomb is quarantined, not decoded)."""
    data = _jpeg()  # 37 x 53 = 1,961 pixels
    monkeypatch.setattr(imageio, "_decode_colour_jpeg", lambda d: pytest.fail("fast path ran"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(LamflowError, match="bomb: cannot decode"):
        decode_image(data, "bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # over the limit, under twice it
    with pytest.warns(Image.DecompressionBombWarning):
        np.testing.assert_array_equal(decode_image(data), _pil_rgb(data))


def test_damaged_jpeg_falls_back_to_pil_which_names_the_frame():
    """Bytes the fast decoder refuses go to PIL: a JPEG with its header intact but its data
    cut is still undecodable (not a half-grey frame), and the error names the frame."""
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    with pytest.raises(LamflowError, match="f9: cannot decode"):
        decode_image(data[: len(data) - 200], "f9")
    with pytest.raises(LamflowError, match="f8: cannot decode"):
        decode_image(data[:3] + b"\x00" * 40, "f8")


def test_rgb_label_is_refused():
    with pytest.raises(LamflowError, match="single-channel"):
        decode_label(encode_png(np.zeros((4, 4, 3), np.uint8)), "lab.png")


def test_overlay_and_resize_label():
    img = np.zeros((4, 4, 3), np.uint8)
    lab = np.ones((4, 4), np.uint8)
    pal = np.zeros((256, 3), np.uint8)
    pal[1] = (200, 100, 0)
    assert tuple(overlay(img, lab, pal, alpha=0.5)[0, 0]) == (100, 50, 0)
    assert set(np.unique(resize_label(np.array([[0, 3], [3, 0]], np.uint8), (5, 7)))) == {0, 3}


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53)])
def test_grey_png_is_a_standard_png(shape):
    """Every value 0..255 and every row difference (wrapping modulo 256) survive, as read by
    PIL and by OpenCV, for odd shapes and for non-contiguous views."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    arr.flat[0], arr.flat[-1] = 255, 0
    for a in (arr, np.asfortranarray(arr), arr[::-1, ::-1]):
        data = encode_gray_png(a)
        with Image.open(io.BytesIO(data)) as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), a)
        np.testing.assert_array_equal(
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), a
        )


def test_grey_png_refuses_bad_input():
    with pytest.raises(LamflowError, match="uint8"):
        encode_gray_png(np.zeros((4, 4), np.int32))
    with pytest.raises(LamflowError, match="empty"):
        encode_gray_png(np.zeros((0, 4), np.uint8))
