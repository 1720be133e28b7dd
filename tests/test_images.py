"""Tests for nsfwd.intake: every accepted shape of real photographs, and every way to be refused."""

from __future__ import annotations

import base64
import contextlib
import random
import struct
import tracemalloc
import warnings
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from nsfwd.intake import (
    SUPPORTED_FORMATS,
    CorruptImageError,
    ImageDimensionsError,
    ImageError,
    ImageLimits,
    ImageTooLargeError,
    UnsupportedFormatError,
    exif_orientation,
    load_image,
    load_image_file,
    read_header,
    read_image_file,
    sniff_format,
)
from photos import (
    encode,
    flatten_on_white,
    gray16,
    photo,
    resized,
    variant_table,
    variants,
    with_alpha,
    with_exif_orientation,
)

MIB = 1024 * 1024
VARIANTS = variant_table()


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel of two same-sized RGB images."""
    assert a.size == b.size
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (8-bit RGB) and carries almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(encode(resized("astronaut", (160, 160)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    assert struct.unpack_from(">HH", data, sof + 5) == (160, 160)
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A real small animated WebP whose VP8X canvas is patched to width x height."""
    small = resized("coffee", (160, 160))
    data = bytearray(encode(small, "WEBP", save_all=True, append_images=[small.rotate(90)]))
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(kind, start, end) of every chunk of a well-formed PNG."""
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append((data[pos + 4 : pos + 8], pos, pos + 12 + length))
        pos += 12 + length
    return chunks


# --- accepted inputs -----------------------------------------------------------------------


def test_public_constants_and_error_codes() -> None:
    assert SUPPORTED_FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF", "TIFF", "BMP")
    codes = {
        ImageTooLargeError: "too_large",
        UnsupportedFormatError: "unsupported_format",
        ImageDimensionsError: "bad_dimensions",
        CorruptImageError: "corrupt",
    }
    for cls, code in codes.items():
        error = cls("what went wrong")
        assert isinstance(error, ImageError)
        assert isinstance(error, ValueError)
        assert error.code == code
        assert str(error) == "what went wrong"
    assert ImageLimits() == ImageLimits(10 * MIB, 128, 2048, 2048 * 2048)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_side": 0}, {"max_bytes": -1}, {"min_side": 300, "max_side": 200}, {"max_pixels": 1.5}],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ImageLimits"):
        ImageLimits(**kwargs)  # type: ignore[arg-type]


def test_the_variants_cover_every_format_and_pixel_mode() -> None:
    formats, modes = set(), set()
    for data in variants().values():
        with Image.open(BytesIO(data)) as image:
            formats.add(image.format)
            modes.add(image.mode)
    assert formats == {"JPEG", "PNG", "WEBP"}
    assert {"RGB", "L", "I;16", "1", "P", "RGBA", "LA", "CMYK"} <= modes


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_loads_as_the_upright_rgb_picture(name: str) -> None:
    variant = VARIANTS[name]
    image = load_image(variant.data)
    assert type(image) is Image.Image  # detached: not an ImageFile holding a file object
    assert image.mode == "RGB"
    assert image.size == variant.expected.size
    if variant.tolerance == 0.0:
        assert np.array_equal(np.asarray(image), np.asarray(variant.expected))
    else:
        assert mean_abs_diff(image, variant.expected) <= variant.tolerance
    assert sniff_format(variant.data) == name.split("_", maxsplit=1)[0].upper()


def test_size_edge_cases_keep_their_exact_sizes() -> None:
    sizes = {
        name: load_image(VARIANTS[name].data).size
        for name in ("jpeg_128x128", "jpeg_2048x2048", "jpeg_tall_300x1800", "jpeg_wide_1800x300")
    }
    assert sizes == {
        "jpeg_128x128": (128, 128),
        "jpeg_2048x2048": (2048, 2048),
        "jpeg_tall_300x1800": (300, 1800),
        "jpeg_wide_1800x300": (1800, 300),
    }


@pytest.mark.parametrize(
    ("orientation", "wrong_way"),
    [
        (6, Image.Transpose.ROTATE_180),  # turned the wrong way round
        (8, Image.Transpose.ROTATE_180),
        (3, Image.Transpose.ROTATE_180),  # left as stored
    ],
)
def test_exif_orientation_is_applied(orientation: int, wrong_way: Image.Transpose) -> None:
    upright = photo("chelsea")  # 451x300
    data = with_exif_orientation(upright, orientation)
    with Image.open(BytesIO(data)) as stored:
        assert stored.size == ((300, 451) if orientation in (6, 8) else (451, 300))
    image = load_image(data)
    assert image.size == (451, 300)
    assert mean_abs_diff(image, upright) < 4.0
    assert mean_abs_diff(image, upright.transpose(wrong_way)) > 20.0
    assert 0x0112 not in image.getexif()  # the orientation was consumed, not left to reapply


BROKEN_EXIF = {
    "not-tiff": b"MF\x00*\x00\x00\x00\x08" + bytes(40),
    "cut-short": b"MM\x00",
    "ifd-past-the-end": b"MM\x00*\xff\xff\xff\xf0",
    "65535-entries-no-data": b"MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(12),
    "orientation-9": b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01"
    b"\x00\x09\x00\x00\x00\x00\x00\x00",
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("exif", sorted(BROKEN_EXIF))
def test_broken_exif_does_not_reject_a_good_image(fmt: str, exif: str) -> None:
    stored = photo("chelsea")
    prefix = b"Exif\x00\x00" if fmt == "JPEG" else b""  # the APP1 segment's own header
    data = encode(stored, fmt, exif=prefix + BROKEN_EXIF[exif])
    with Image.open(BytesIO(data)) as raw:
        assert "exif" in raw.info
    image = load_image(data)
    assert image.size == (451, 300)
    assert mean_abs_diff(image, stored) < 6.0


def test_fully_transparent_pixels_become_white_whatever_their_hidden_colour() -> None:
    pictures = [with_alpha(photo("coffee"), hidden=hidden) for hidden in [(255, 0, 255), (0, 0, 0)]]
    assert not np.array_equal(np.asarray(pictures[0]), np.asarray(pictures[1]))
    loaded = [load_image(encode(picture, "PNG")) for picture in pictures]
    assert np.array_equal(np.asarray(loaded[0]), np.asarray(loaded[1]))
    band = np.asarray(loaded[0])[: 400 // 4]
    assert (band == 255).all()
    # Pillow's plain convert shows the colour stored under transparent pixels; load_image must not.
    assert tuple(pictures[0].convert("RGB").getpixel((10, 10))) == (255, 0, 255)  # type: ignore[arg-type]


def test_partial_alpha_is_composited_over_white() -> None:
    picture = with_alpha(photo("coffee"))
    image = load_image(encode(picture, "PNG"))
    reference = np.asarray(flatten_on_white(picture), np.int16)
    assert np.abs(np.asarray(image, np.int16) - reference).max() <= 1
    # Below the transparent band, the ramp starts at alpha 40/255: mostly white, not the photo.
    pixel, under = np.asarray(image)[300, 0], np.asarray(picture)[300, 0, :3].astype(float)
    assert np.asarray(picture)[300, 0, 3] == 40
    expected = np.rint(under * 40 / 255 + 255 * (1 - 40 / 255))
    assert np.abs(pixel.astype(int) - expected).max() <= 1


def test_transparent_palette_entry_becomes_white() -> None:
    image = load_image(VARIANTS["png_palette_transparent"].data)
    white = (np.asarray(image) == 255).all(axis=-1)
    assert white.mean() > 0.02  # the most common palette entry, now white
    assert np.array_equal(
        np.asarray(image), np.asarray(VARIANTS["png_palette_transparent"].expected)
    )


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    variant = VARIANTS["png_gray16"]
    with Image.open(BytesIO(variant.data)) as raw:
        assert raw.mode == "I;16"
        assert np.asarray(raw.convert("L")).mean() > 250  # Pillow's own convert clips to white
    image = np.asarray(load_image(variant.data))
    camera = np.asarray(photo("camera"))
    assert np.array_equal(image[..., 0], camera)
    assert np.array_equal(image[..., 0], image[..., 2])


def test_sixteen_bit_grayscale_colour_key_becomes_white() -> None:
    wide, high_byte = gray16(photo("camera"))
    values = np.asarray(wide)
    key = int(values[100, 100])
    data = encode(wide, "PNG", transparency=key)
    image = np.asarray(load_image(data))
    keyed = values == key
    assert (image[keyed] == 255).all()
    assert np.array_equal(image[~keyed][:, 0], np.asarray(high_byte)[~keyed])


@pytest.mark.parametrize(
    ("mode", "value", "rgb"),
    [
        ("F", 100.0, (100, 100, 100)),
        ("I", 0x1234, (0x12, 0x12, 0x12)),
        ("I", -5, (0, 0, 0)),
        ("I", 1 << 20, (255, 255, 255)),
        ("I;16B", 0x8001, (0x80, 0x80, 0x80)),
        ("YCbCr", (128, 128, 128), (128, 128, 128)),
        ("LA", (10, 255), (10, 10, 10)),
        ("La", (0, 0), (255, 255, 255)),
        ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
        ("PA", (0, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("1", 0, (0, 0, 0)),
    ],
)
def test_pillow_modes_that_no_upload_decodes_to_still_convert(
    mode: str, value: float | tuple[int, ...], rgb: tuple[int, int, int]
) -> None:
    from nsfwd.intake.views import frame_views  # these modes cannot be reached from a file

    views = frame_views(Image.new(mode, (4, 4), value), 0, None)
    image = next(view.image for view in views if view.backdrop != "black")
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == rgb


def test_animated_files_give_their_first_frame() -> None:
    for name in ("png_animated", "webp_animated"):
        with Image.open(BytesIO(VARIANTS[name].data)) as raw:
            assert getattr(raw, "n_frames", 1) == 2
        first = np.asarray(load_image(VARIANTS[name].data))
        assert np.array_equal(first, np.asarray(VARIANTS[name].expected))


def test_exact_byte_limit_is_accepted_and_one_more_is_not() -> None:
    data = VARIANTS["jpeg_baseline"].data
    assert load_image(data, ImageLimits(max_bytes=len(data))).size == (512, 512)
    with pytest.raises(ImageTooLargeError):
        load_image(data, ImageLimits(max_bytes=len(data) - 1))


# --- refused inputs ------------------------------------------------------------------------


def test_too_many_bytes() -> None:
    data = b"\xff\xd8\xff" + bytes(10 * MIB)
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(data)
    assert caught.value.code == "too_large"
    assert "10,485,763 bytes" in str(caught.value)
    assert "limit is 10,485,760 bytes" in str(caught.value)


def test_byte_size_is_checked_before_the_format() -> None:
    pdf = encode(photo(), "PDF")
    with pytest.raises(ImageTooLargeError):
        load_image(pdf, ImageLimits(max_bytes=1000))


@pytest.mark.parametrize(
    ("size", "fmt", "fragments"),
    [
        ((127, 300), "PNG", ["127x300", "width 127 px is below the minimum of 128 px"]),
        ((300, 127), "WEBP", ["300x127", "height 127 px is below the minimum of 128 px"]),
        ((2049, 256), "JPEG", ["2049x256", "width 2049 px is above the maximum of 2048 px"]),
        ((200, 2049), "PNG", ["200x2049", "height 2049 px is above the maximum of 2048 px"]),
    ],
)
def test_sides_outside_the_limits(size: tuple[int, int], fmt: str, fragments: list[str]) -> None:
    data = encode(resized("coffee", size), fmt)
    with pytest.raises(ImageDimensionsError) as caught:
        load_image(data)
    message = str(caught.value)
    assert caught.value.code == "bad_dimensions"
    for fragment in fragments:
        assert fragment in message
    assert "128..2048 px" in message


def test_pixel_count_over_the_limit() -> None:
    limits = ImageLimits(max_pixels=100_000)
    with pytest.raises(ImageDimensionsError, match=r"512x512 px: 262,144 pixels .* 100,000"):
        load_image(VARIANTS["jpeg_baseline"].data, limits)
    assert load_image(encode(resized("coffee", (400, 250)), "PNG"), limits).size == (400, 250)


@pytest.mark.parametrize(
    ("data", "claimed"),
    [
        (png_header_only(100_000, 100_000), "100000x100000"),
        (png_header_only(5000, 5000), "5000x5000"),
        (jpeg_claiming(65_000, 65_000), "65000x65000"),
        (webp_claiming(16_000, 16_000), "16000x16000"),
    ],
    ids=["png-1e10-pixels", "png-25e6-pixels", "jpeg-sof", "webp-vp8x-canvas"],
)
def test_bomb_headers_are_refused_before_decoding(data: bytes, claimed: str) -> None:
    assert len(data) < 200_000
    with pytest.raises(ImageDimensionsError, match=f"image is {claimed} px"):
        load_image(data)


def jpeg_with_a_second_frame(width: int, height: int) -> bytes:
    """A 160x160 JPEG with a second frame header claiming ``width`` x ``height``: our header
    parser reads the first, Pillow uses the last."""
    data = jpeg_claiming(160, 160)
    sof = data.index(b"\xff\xc0")
    (length,) = struct.unpack_from(">H", data, sof + 2)
    second = bytearray(data[sof : sof + 2 + length])
    struct.pack_into(">HH", second, 5, width, height)
    return data[: sof + 2 + length] + bytes(second) + data[sof + 2 + length :]


def test_the_frame_size_pillow_uses_is_checked_too() -> None:
    # Two frame headers: the first (checked from the raw header) is fine, Pillow uses the last.
    doubled = jpeg_with_a_second_frame(3000, 3000)
    with Image.open(BytesIO(doubled)) as raw:
        assert raw.size == (3000, 3000)
    with pytest.raises(ImageDimensionsError, match="image is 3000x3000 px"):
        load_image(doubled)
    # Garbage between segments is skipped by libjpeg and Pillow, and by the header check.
    junk = jpeg_claiming(9000, 9000)
    sof = junk.index(b"\xff\xc0")
    junk = junk[:sof] + b"\x00junk\xff\x00" + junk[sof:]
    with pytest.raises(ImageDimensionsError, match="image is 9000x9000 px"):
        load_image(junk)


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns above 89M pixels, raises at 2x
def test_pillow_decompression_bomb_guard_maps_to_dimensions_error(side: int) -> None:
    generous = ImageLimits(min_side=1, max_side=100_000, max_pixels=10**12)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDimensionsError, match=f"{side}x{side} px.*decompression bomb"):
            load_image(png_header_only(side, side), generous)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert pillow_limit == Image.MAX_IMAGE_PIXELS


UNSUPPORTED = {
    "pdf": (encode(photo(), "PDF"), "PDF"),
    "jpeg2000": (encode(photo(), "JPEG2000"), "JPEG 2000"),
    "ico": (encode(photo(), "ICO"), "ICO"),
    "psd": (b"8BPS\x00\x01" + bytes(64), "Photoshop PSD"),
    "jpegxl": (b"\xff\x0a" + bytes(64), "JPEG XL"),
    "qoi": (encode(photo(), "QOI"), "QOI"),
    "mp4": (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64), "MP4"),
    "wav": (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64), "RIFF container of type 'WAVE'"),
    "svg": (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    "html": (b"<!DOCTYPE html><html><body>not an image</body></html>", "HTML"),
    "text": ("just some text, naïvely uploaded\n".encode(), "text"),
    "base64": (
        base64.b64encode(encode(resized("coffee", (200, 200)), "PNG")),
        "base64-encoded PNG",
    ),
    "empty": (b"", "empty (0 bytes)"),
    "random": (np.random.default_rng(7).bytes(4096), "unrecognised binary data (first bytes: "),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_formats_say_what_they_look_like(name: str) -> None:
    data, looks_like = UNSUPPORTED[name]
    assert sniff_format(data) is None
    with pytest.raises(UnsupportedFormatError) as caught:
        load_image(data)
    assert caught.value.code == "unsupported_format"
    assert looks_like in str(caught.value)
    assert "JPEG, PNG, WebP, GIF, HEIC/HEIF, AVIF, TIFF and BMP" in str(caught.value)


def _truncated_and_corrupt() -> dict[str, tuple[bytes, str]]:
    jpeg = VARIANTS["jpeg_baseline"].data
    png = VARIANTS["png_rgb"].data
    webp = VARIANTS["webp_lossy"].data
    chunks = png_chunks(png)
    idat_kind, idat_start, idat_end = next(chunk for chunk in chunks if chunk[0] == b"IDAT")
    assert idat_kind == b"IDAT"
    assert chunks[-1][0] == b"IEND"
    bad_crc = bytearray(png)
    bad_crc[idat_end - 1] ^= 0x01
    flipped = bytearray(png)
    middle = (idat_start + idat_end) // 2
    flipped[middle : middle + 16] = bytes(16)
    sos = jpeg.index(b"\xff\xda")
    return {
        "jpeg-half": (jpeg[: len(jpeg) // 2], "truncated"),
        "jpeg-without-eoi": (jpeg[:-2], "truncated"),
        "jpeg-bad-scan-header": (jpeg[: sos + 4] + b"\x09" + jpeg[sos + 5 :], "broken data"),
        "jpeg-signature-only": (jpeg[:3], "cannot parse its header"),
        "png-half": (png[: len(png) // 2], "truncated"),
        "png-without-iend": (png[: chunks[-1][1]], "without an IEND chunk"),
        "png-bad-idat-crc": (bytes(bad_crc), "'IDAT' at byte"),
        "png-zeroed-middle": (bytes(flipped), "bad CRC"),
        "png-signature-only": (png[:8], "cannot parse its header"),
        "png-partial-signature": (png[:5], "only 5 bytes: the start of a PNG file"),
        "webp-half": (webp[: len(webp) // 2], "cannot be decoded"),
        "webp-last-10-bytes-missing": (webp[:-10], "cannot be decoded"),
        "webp-header-only": (webp[:30], "cannot be decoded"),
    }


TRUNCATED_AND_CORRUPT = _truncated_and_corrupt()


@pytest.mark.parametrize("name", sorted(TRUNCATED_AND_CORRUPT))
def test_truncated_and_corrupt_files(name: str) -> None:
    data, fragment = TRUNCATED_AND_CORRUPT[name]
    with pytest.raises(CorruptImageError) as caught:
        load_image(data)
    assert caught.value.code == "corrupt"
    assert fragment in str(caught.value)


def test_corrupt_errors_chain_the_pillow_error() -> None:
    jpeg = VARIANTS["jpeg_baseline"].data
    with pytest.raises(CorruptImageError) as caught:
        load_image(jpeg[: len(jpeg) // 2])
    assert isinstance(caught.value.__cause__, OSError)
    assert "image file is truncated" in str(caught.value.__cause__)


def test_libjpeg_conceals_damage_inside_the_compressed_data() -> None:
    # Like a browser, libjpeg decodes damaged entropy-coded data (or an early end-of-image
    # marker) with glitches instead of failing, and Pillow does not surface its warnings.
    jpeg = VARIANTS["jpeg_baseline"].data
    half = len(jpeg) // 2
    for damaged in (jpeg[:half] + bytes(2000) + jpeg[half + 2000 :], jpeg[:half] + b"\xff\xd9"):
        image = load_image(damaged)
        assert image.size == (512, 512)
        assert mean_abs_diff(image, photo("astronaut")) > 5.0


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_random_damage_only_ever_raises_image_errors() -> None:
    small = resized("coffee", (160, 140))
    bases = [
        encode(small, "JPEG"),
        encode(small, "JPEG", progressive=True),
        encode(small.convert("CMYK"), "JPEG"),
        with_exif_orientation(small, 6),
        encode(small, "PNG"),
        encode(small.quantize(32), "PNG", transparency=0),
        encode(with_alpha(small), "PNG"),
        with_exif_orientation(small, 6, "PNG"),
        encode(small, "PNG", save_all=True, append_images=[small.rotate(90)]),
        encode(small, "WEBP"),
        encode(with_alpha(small), "WEBP", lossless=True),
        encode(small, "WEBP", save_all=True, append_images=[small.rotate(90)]),
    ]
    rng = random.Random(20240601)

    def damage(data: bytes) -> bytes:
        damaged = bytearray(data)
        kind = rng.randrange(6)
        if kind == 0:  # truncate anywhere
            return data[: rng.randrange(len(data))]
        if kind == 1:  # flip a few bytes anywhere
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 2:  # flip bytes in the headers
            for _ in range(rng.randint(1, 3)):
                damaged[rng.randrange(min(len(damaged), 120))] = rng.randrange(256)
        elif kind == 3:  # overwrite a run with random bytes
            at, size = rng.randrange(len(damaged)), rng.randint(1, 64)
            damaged[at : at + size] = rng.randbytes(size)
        elif kind == 4:  # insert random bytes
            at = rng.randrange(len(damaged))
            damaged[at:at] = rng.randbytes(rng.randint(1, 64))
        else:  # delete a run
            at = rng.randrange(len(damaged))
            del damaged[at : at + rng.randint(1, 64)]
        return bytes(damaged)

    outcomes: Counter[str] = Counter()
    for _ in range(1500):
        data = damage(rng.choice(bases))
        try:
            image = load_image(data)
        except ImageError as error:
            assert str(error)
            outcomes[error.code] += 1
        else:
            assert type(image) is Image.Image
            assert image.mode == "RGB"
            assert 128 <= min(image.size) <= max(image.size) <= 2048
            outcomes["ok"] += 1
    assert outcomes["ok"] > 150
    assert outcomes["corrupt"] > 600
    assert set(outcomes) <= {"ok", "corrupt", "bad_dimensions", "unsupported_format"}


# --- sniffing, files, global state, threads --------------------------------------------------


def test_sniff_format() -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_format(b"\xff\xd8") is None
    assert sniff_format(b"GIF89a") == "GIF"
    assert sniff_format(b"II*\x00") == sniff_format(b"MM\x00+") == "TIFF"
    assert sniff_format(b"BM" + bytes(12) + b"\x28" + bytes(3)) == "BMP"
    assert sniff_format(b"BMW cars are fast, are they not?") is None  # two bytes are not enough
    assert sniff_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") == "HEIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif") == "AVIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") is None
    assert sniff_format(b"") is None


def test_load_image_file(tmp_path: Path) -> None:
    path = tmp_path / "cat.webp"
    path.write_bytes(VARIANTS["webp_exif_8"].data)
    for argument in (path, str(path)):
        image = load_image_file(argument)
        assert (image.mode, image.size) == ("RGB", (300, 451))  # as stored: see webp_exif_8
    with pytest.raises(FileNotFoundError):
        load_image_file(tmp_path / "missing.png")


def test_load_image_file_refuses_a_huge_file_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with path.open("wb") as file:
        file.write(VARIANTS["jpeg_baseline"].data)
        file.truncate(5 * 1024**3)  # sparse: 5 GiB that take no disk space
    limits = ImageLimits()
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError) as caught:
            load_image_file(path, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * limits.max_bytes + MIB  # read max_bytes + 1 at most, not 5 GiB
    assert "5,368,709,120 bytes" in str(caught.value)
    assert "limit is 10,485,760 bytes" in str(caught.value)


def test_pillow_global_state_is_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for data in (VARIANTS["png_rgba"].data, png_header_only(100_000, 100_000), b"GIF89a"):
        with contextlib.suppress(ImageError):
            load_image(data)
    generous = ImageLimits(min_side=1, max_side=100_000, max_pixels=10**12)
    with pytest.raises(ImageDimensionsError):
        load_image(png_header_only(10_000, 10_000), generous)
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    assert after == before
    assert before[1] is False


def test_concurrent_loads_agree_with_serial_loads() -> None:
    names = ["jpeg_baseline", "png_rgba", "webp_lossy", "png_gray16", "jpeg_exif_6"] * 4
    serial = {name: np.asarray(load_image(VARIANTS[name].data)) for name in set(names)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda name: load_image(VARIANTS[name].data), names))
    for name, image in zip(names, results, strict=True):
        assert np.array_equal(np.asarray(image), serial[name])


# --- read_header: the checks before decoding, alone (the tensor decode path runs them) ------

HEADER_REFUSALS = {
    **{f"unsupported-{name}": data for name, (data, _) in UNSUPPORTED.items()},
    "too-many-bytes": bytes(11 * MIB),
    "too-small": encode(resized("coffee", (127, 300)), "PNG"),
    "too-wide": encode(resized("coffee", (2049, 256)), "JPEG"),
    "png-bomb": png_header_only(100_000, 100_000),
    "jpeg-bomb": jpeg_claiming(65_000, 65_000),
    "webp-canvas": webp_claiming(16_000, 16_000),
    "jpeg-signature-only": VARIANTS["jpeg_baseline"].data[:3],
}


@pytest.mark.parametrize("name", sorted(HEADER_REFUSALS))
def test_read_header_refuses_what_load_image_refuses_before_decoding(name: str) -> None:
    data = HEADER_REFUSALS[name]
    with pytest.raises(ImageError) as loading:
        load_image(data)
    with pytest.raises(ImageError) as reading:
        read_header(data)
    assert type(reading.value) is type(loading.value)
    assert str(reading.value) == str(loading.value)


def test_read_header_checks_the_frame_size_pillow_uses_too() -> None:
    doubled = jpeg_with_a_second_frame(3000, 3000)
    with pytest.raises(ImageDimensionsError, match="image is 3000x3000 px"):
        read_header(doubled)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_read_header_describes_every_accepted_variant(name: str) -> None:
    data = VARIANTS[name].data
    header = read_header(data)
    with Image.open(BytesIO(data)) as raw:
        assert (header.format, header.width, header.height, header.mode) == (
            raw.format if raw.format != "MPO" else "JPEG",
            *raw.size,
            raw.mode,
        )
    turned = {"jpeg_exif_3": 3, "jpeg_exif_6": 6, "jpeg_exif_8": 8, "png_exif_6": 6}
    assert header.orientation == turned.get(name, 1)  # what browsers follow (no WebP EXIF)


def test_damage_past_the_header_is_load_images_to_find() -> None:
    truncated, _ = TRUNCATED_AND_CORRUPT["jpeg-half"]
    assert read_header(truncated).format == "JPEG"
    with pytest.raises(CorruptImageError):
        load_image(truncated)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("exif", sorted(BROKEN_EXIF))
def test_an_unreadable_orientation_is_upright(exif: str) -> None:
    data = encode(photo("chelsea"), "JPEG", exif=b"Exif\x00\x00" + BROKEN_EXIF[exif])
    with Image.open(BytesIO(data)) as image:
        assert exif_orientation(image.info.get("exif")) == 1
    assert read_header(data).orientation == 1


def test_read_image_file(tmp_path: Path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(VARIANTS["jpeg_exif_6"].data)
    assert read_image_file(path) == VARIANTS["jpeg_exif_6"].data
    limits = ImageLimits(max_bytes=1000)
    with pytest.raises(ImageTooLargeError, match=f"file {str(path)!r} is"):
        read_image_file(path, limits)
    with pytest.raises(IsADirectoryError):
        read_image_file(tmp_path)
