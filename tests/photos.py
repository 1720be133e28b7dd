"""Test inputs made from real photographs that ship with scikit-image.

The photographs (astronaut, chelsea, coffee, rocket and the grayscale camera) are read from the
``skimage.data`` package folder, so no download is needed, and re-encoded in memory with
Pillow into every format and shape the intake accepts. :func:`variants` returns the encoded
files; :func:`variant_table` adds, for each one, the upright RGB picture a correct decoder must
return and how closely (lossy codecs lose a little).

Everything is deterministic and cached: the same bytes come back on every call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

DATA_DIR = Path(skimage.data.__file__).parent
PHOTOS = {
    "astronaut": "astronaut.png",  # 512x512 RGB
    "chelsea": "chelsea.png",  # 451x300 RGB (a cat)
    "coffee": "coffee.png",  # 600x400 RGB
    "rocket": "rocket.jpg",  # 427x640 RGB
    "camera": "camera.png",  # 512x512 grayscale (mode L)
}
ASTRONAUT = DATA_DIR / PHOTOS["astronaut"]
EXIF_ORIENTATION_TAG = 0x0112
# The transposition that *stores* an upright picture so that a viewer honouring the EXIF
# orientation shows it upright again (the inverse of what the orientation asks a viewer to do).
STORE_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # 6 = "rotate 90 clockwise to view"; store it turned left
    8: Image.Transpose.ROTATE_270,  # 8 = "rotate 90 counter-clockwise to view"
}


@dataclass(frozen=True)
class Variant:
    """An encoded test file and what decoding it must give."""

    data: bytes
    """The encoded file."""
    expected: Image.Image
    """The upright RGB picture it holds (alpha already flattened onto white)."""
    tolerance: float
    """Largest acceptable mean absolute difference per channel (0.0: pixel-exact)."""


@functools.cache
def _read_photo(name: str) -> Image.Image:
    with Image.open(DATA_DIR / PHOTOS[name]) as image:
        image.load()
        return image.copy()


def photo(name: str = "astronaut") -> Image.Image:
    """Return a fresh copy of a bundled photograph (mode RGB, or L for ``"camera"``)."""
    return _read_photo(name).copy()


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """Encode ``image`` with Pillow in format ``fmt`` and return the file's bytes."""
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def astronaut_jpeg(size: tuple[int, int] = (512, 512), quality: int = 90) -> bytes:
    """The astronaut photograph resized to ``size`` (aspect ratio not kept), as a JPEG."""
    return encode(Image.open(ASTRONAUT).convert("RGB").resize(size), "JPEG", quality=quality)


def with_exif_orientation(upright: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """Encode ``upright`` stored turned, with an EXIF orientation that turns it back."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    stored = upright.transpose(STORE_FOR_ORIENTATION[orientation])
    params: dict[str, Any] = {"quality": 92} if fmt == "JPEG" else {}
    return encode(stored, fmt, exif=exif.tobytes(), **params)


def flatten_on_white(rgba: Image.Image) -> Image.Image:
    """Reference compositing of an RGBA image over white, done in numpy (not Pillow)."""
    pixels = np.asarray(rgba.convert("RGBA")).astype(np.float64)
    alpha = pixels[..., 3:] / 255.0
    flat = pixels[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return Image.fromarray(np.rint(flat).astype(np.uint8))


def with_alpha(image: Image.Image, *, hidden: tuple[int, int, int] = (255, 0, 255)) -> Image.Image:
    """Give ``image`` an alpha channel: a left-to-right ramp, and a fully transparent top band.

    Under the transparent band the colour is replaced by ``hidden`` (an arbitrary colour a
    viewer never shows), so tests can check that it does not leak into the decoded picture.
    """
    rgba = image.convert("RGBA")
    width, height = rgba.size
    ramp = np.tile(np.linspace(40, 255, width).astype(np.uint8), (height, 1))
    ramp[: height // 4] = 0
    pixels = np.asarray(rgba).copy()
    pixels[..., 3] = ramp
    pixels[: height // 4, :, :3] = hidden
    return Image.fromarray(pixels)


def gray16(image: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Return a 16-bit grayscale image (mode I;16) and its exact 8-bit high byte (mode L).

    The low byte is random, so only a decoder that keeps the high byte gets it exact; one that
    clips values to 255 (Pillow's plain ``convert``) gets an almost white picture.
    """
    high = np.asarray(image.convert("L")).astype(np.uint16)
    low = np.random.default_rng(16).integers(0, 256, high.shape, dtype=np.uint16)
    return Image.fromarray(high << 8 | low), Image.fromarray(high.astype(np.uint8))


def palette_with_transparency(image: Image.Image) -> tuple[bytes, Image.Image]:
    """Encode a palette PNG whose most common index is transparent; return it and its reference."""
    quantized = image.convert("RGB").quantize(64)
    indices = np.asarray(quantized)
    transparent = int(np.bincount(indices.ravel()).argmax())
    expected = np.asarray(quantized.convert("RGB")).copy()
    expected[indices == transparent] = 255
    data = encode(quantized, "PNG", transparency=transparent)
    return data, Image.fromarray(expected)


def resized(name: str, size: tuple[int, int]) -> Image.Image:
    """Return a bundled photograph resized (aspect ratio not kept) to ``size``."""
    return photo(name).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def _two_frames(first: Image.Image) -> list[Image.Image]:
    second = Image.fromarray(255 - np.asarray(first))
    return [first, second]


@functools.cache
def _table() -> tuple[tuple[str, Variant], ...]:
    astronaut = photo("astronaut")
    chelsea = photo("chelsea")
    coffee = photo("coffee")
    rocket = photo("rocket")
    camera = photo("camera")
    camera_rgb = camera.convert("RGB")
    chelsea_alpha = with_alpha(chelsea)
    gray16_image, gray16_expected = gray16(camera)
    palette = chelsea.quantize(256)
    trns_data, trns_expected = palette_with_transparency(astronaut)
    bilevel = camera.convert("1")
    small = resized("coffee", (200, 160))

    def exact(data: bytes, expected: Image.Image) -> Variant:
        return Variant(data, expected.convert("RGB"), 0.0)

    def lossy(data: bytes, expected: Image.Image, tolerance: float = 4.0) -> Variant:
        return Variant(data, expected.convert("RGB"), tolerance)

    table = {
        "jpeg_baseline": lossy(encode(astronaut, "JPEG", quality=90), astronaut),
        "jpeg_progressive": lossy(
            encode(coffee, "JPEG", quality=90, progressive=True, optimize=True), coffee
        ),
        "png_rgb": exact(encode(chelsea, "PNG"), chelsea),
        "webp_lossy": lossy(encode(rocket, "WEBP", quality=85), rocket),
        "webp_lossless": exact(encode(coffee, "WEBP", lossless=True), coffee),
        "jpeg_gray": lossy(encode(camera, "JPEG", quality=90), camera_rgb),
        "png_gray": exact(encode(camera, "PNG"), camera_rgb),
        "png_gray16": exact(encode(gray16_image, "PNG"), gray16_expected),
        "png_bilevel": exact(encode(bilevel, "PNG"), bilevel),
        "png_palette": exact(encode(palette, "PNG"), palette),
        "png_palette_transparent": exact(trns_data, trns_expected),
        "png_rgba": Variant(encode(chelsea_alpha, "PNG"), flatten_on_white(chelsea_alpha), 0.5),
        "png_gray_alpha": Variant(
            encode(with_alpha(camera).convert("LA"), "PNG"),
            flatten_on_white(with_alpha(camera).convert("LA")),
            0.5,
        ),
        "webp_lossless_alpha": Variant(
            encode(chelsea_alpha, "WEBP", lossless=True),
            flatten_on_white(chelsea_alpha),
            0.5,
        ),
        "jpeg_cmyk": lossy(encode(rocket.convert("CMYK"), "JPEG", quality=92), rocket, 5.0),
        "jpeg_exif_6": lossy(with_exif_orientation(chelsea, 6), chelsea),
        "jpeg_exif_8": lossy(with_exif_orientation(chelsea, 8), chelsea),
        "jpeg_exif_3": lossy(with_exif_orientation(chelsea, 3), chelsea),
        "png_exif_6": exact(with_exif_orientation(chelsea, 6, "PNG"), chelsea),
        # browsers do not turn a WebP by its EXIF (tests/test_browser_views.py): neither does nsfwd
        "webp_exif_8": lossy(
            with_exif_orientation(chelsea, 8, "WEBP"),
            chelsea.transpose(STORE_FOR_ORIENTATION[8]),
            6.0,
        ),
        "jpeg_128x128": lossy(
            encode(resized("astronaut", (128, 128)), "JPEG", quality=95),
            resized("astronaut", (128, 128)),
            5.0,
        ),
        "jpeg_2048x2048": lossy(
            encode(resized("astronaut", (2048, 2048)), "JPEG", quality=90),
            resized("astronaut", (2048, 2048)),
        ),
        "jpeg_tall_300x1800": lossy(
            encode(resized("rocket", (300, 1800)), "JPEG", quality=90),
            resized("rocket", (300, 1800)),
        ),
        "jpeg_wide_1800x300": lossy(
            encode(resized("chelsea", (1800, 300)), "JPEG", quality=90),
            resized("chelsea", (1800, 300)),
        ),
        "png_animated": exact(
            encode(small, "PNG", save_all=True, append_images=_two_frames(small)[1:]), small
        ),
        "webp_animated": exact(
            encode(
                small, "WEBP", save_all=True, append_images=_two_frames(small)[1:], lossless=True
            ),
            small,
        ),
    }
    return tuple(table.items())


def variant_table() -> dict[str, Variant]:
    """Return every accepted test file by name, with the picture decoding must give."""
    return dict(_table())


def variants() -> dict[str, bytes]:
    """Return every accepted test file by name: each format, pixel mode, orientation and size.

    JPEG (baseline, progressive, grayscale, CMYK, EXIF orientations 3/6/8), PNG (RGB, gray,
    16-bit gray, 1-bit, palette, palette with transparency, RGBA, gray+alpha, EXIF, animated),
    WebP (lossy, lossless, lossless with alpha, EXIF, animated), and the size edge cases
    128x128, 2048x2048, 300x1800 and 1800x300.
    """
    return {name: variant.data for name, variant in _table()}
