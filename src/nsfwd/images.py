"""Image intake: bytes in, a validated upright RGB image out, or a typed error saying why not.

Every upload (HTTP or batch CLI) passes through :func:`load_views` (or :func:`load_prepared`),
which decodes what a viewer sees: every judged frame, over white and black where it is
transparent, in sRGB (:mod:`nsfwd.viewer`); :func:`load_image` gives the first frame over
white. The checks run cheapest first, and nothing is decoded before it is known to be small
enough. :func:`read_header` runs the checks that come before decoding alone, for decoders that
take over from there. docs/ARCHITECTURE.md ("Image intake") gives the order of the checks and
the reasons. Nothing here changes Pillow's global state.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import ClassVar, Final, TypeVar

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from nsfwd import jpeg_structure
from nsfwd.viewer import (
    ColourProfileError,
    View,
    Views,
    frame_views,
    frames_to_judge,
    needs_colour_conversion,
)

__all__ = [
    "ORIENTATION_TRANSPOSE",
    "SUPPORTED_FORMATS",
    "CorruptImageError",
    "ImageComplexityError",
    "ImageDimensionsError",
    "ImageError",
    "ImageHeader",
    "ImageLimits",
    "ImageTooLargeError",
    "UnscorableImageError",
    "UnsupportedFormatError",
    "exif_orientation",
    "load_image",
    "load_image_file",
    "load_prepared",
    "load_views",
    "read_header",
    "read_image_file",
    "sniff_format",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")
"""Pillow format names that :func:`load_image` accepts, as :func:`sniff_format` returns them."""

_MIB: Final = 1024 * 1024
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
# JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC, which share the range).
_JPEG_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
ORIENTATION_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""The turn that shows an image upright, by EXIF orientation (1, upright, needs none)."""
# catch_warnings() swaps process-wide state; serialise our own uses of it between threads.
_WARNINGS_LOCK: Final = threading.Lock()
# What Pillow and the codecs raise for bad data. Anything else is unexpected and gets logged.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True)
class ImageLimits:
    """Limits that an accepted image must meet; the defaults suit the service.

    ``max_pixels`` is checked from the header, before decoding, and so bounds the memory
    that decoding one image can take (about 4 bytes per pixel).
    """

    max_bytes: int = 10 * _MIB
    """Largest accepted encoded size in bytes."""
    min_side: int = 128
    """Smallest accepted width and height in pixels."""
    max_side: int = 2048
    """Largest accepted width and height in pixels."""
    max_pixels: int = 2048 * 2048
    """Largest accepted width times height."""
    max_animation_pixels: int = 32 * 2048 * 2048
    """Largest accepted width times height times frames: every frame of an animation is
    decoded (each is drawn over the one before), so this bounds the work; checked from the
    header, before decoding."""

    def __post_init__(self) -> None:
        """Refuse limits that no image could meet or that make no sense."""
        for name in ("max_bytes", "min_side", "max_side", "max_pixels", "max_animation_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{name} must be a positive int, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError(
                f"ImageLimits.min_side ({self.min_side}) exceeds max_side ({self.max_side})"
            )

    def describe(self) -> str:
        """Return the dimension limits as a short human phrase, for error messages."""
        return (
            f"each side must be {self.min_side}..{self.max_side} px "
            f"and the image at most {self.max_pixels:,} pixels"
        )


class ImageError(ValueError):
    """Base class: the input is not an image this service accepts.

    ``code`` is a short stable machine name for API responses and metrics; ``str(error)`` is a
    human message saying what was wrong and, where one applies, the limit.
    """

    code: ClassVar[str] = "invalid_image"

    def __init__(self, message: str) -> None:
        """Create the error with its human-readable ``message``."""
        super().__init__(message)
        self.message = message


class UnscorableImageError(ImageError):
    """The model's scores for the image are not finite numbers (NaN or infinite).

    NaN is not above any threshold, so such an image would pass every policy as unflagged;
    it is refused instead (fail closed), like an image that breaks the limits.
    """

    code: ClassVar[str] = "unscorable"

    @classmethod
    def for_labels(cls, labels: Sequence[str]) -> UnscorableImageError:
        """The error for an image whose scores for ``labels`` are not finite."""
        return cls(
            f"the model's scores for it ({', '.join(labels)}) are not finite numbers (NaN or "
            "infinite); it cannot be judged, so it is refused rather than passed as safe"
        )


class ImageTooLargeError(ImageError):
    """The encoded input is larger than :attr:`ImageLimits.max_bytes` (HTTP 400)."""

    code: ClassVar[str] = "too_large"


class UnsupportedFormatError(ImageError):
    """The content is not JPEG, PNG or WebP; the message names what it looks like, if known."""

    code: ClassVar[str] = "unsupported_format"


class ImageDimensionsError(ImageError):
    """A side is outside the limits, the pixel count is too high, or it is a decompression bomb."""

    code: ClassVar[str] = "bad_dimensions"


class CorruptImageError(ImageError):
    """The data is in a supported format but truncated, corrupt or otherwise undecodable."""

    code: ClassVar[str] = "corrupt"


class ImageComplexityError(ImageError):
    """Decoding the image would cost far more than its size suggests (a JPEG with hundreds of
    scans, or megabytes of padding), or it took longer than the server allows."""

    code: ClassVar[str] = "too_complex"


@dataclass(frozen=True)
class ImageHeader:
    """What :func:`read_header` learnt about an image without decoding its pixels."""

    format: str
    """``"JPEG"``, ``"PNG"`` or ``"WEBP"``, from the content."""
    width: int
    height: int
    mode: str
    """Pillow's mode for the stored pixels (for JPEG: ``"L"``, ``"RGB"`` or ``"CMYK"``)."""
    orientation: int | None
    """The EXIF orientation :func:`load_image` applies (1 when none), for JPEG, whose EXIF
    comes before the pixels; ``None`` for PNG and WebP, whose EXIF Pillow reads only while
    decoding."""
    frames: int = 1
    """Frames in the file (animated PNG and WebP; an APNG's default image counts)."""
    colour_managed: bool = False
    """Whether it displays in other colours than its stored pixels (an ICC profile other than
    sRGB's, a PNG gAMA): decoders that do not convert colour must leave it to Pillow."""


def sniff_format(data: bytes) -> str | None:
    """Return ``"JPEG"``, ``"PNG"`` or ``"WEBP"`` from the magic bytes of ``data``, else ``None``.

    Only the signature is checked; whether the rest is valid is :func:`load_image`'s job.
    """
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def load_views(data: bytes, limits: ImageLimits = ImageLimits()) -> Views[Image.Image]:
    """Validate and decode an uploaded image into what viewers see (:mod:`nsfwd.viewer`):
    every judged frame (all up to :data:`~nsfwd.viewer.MAX_JUDGED_FRAMES`, else that many
    spread evenly; an APNG's default image is frame 0), upright, in sRGB, and over white and
    over black where it is not fully opaque. Every frame is decoded, so corrupt data in any
    frame refuses the image.

    Raises what :func:`load_image` raises; an animation over
    :attr:`ImageLimits.max_animation_pixels` is an :class:`ImageDimensionsError`, before any
    frame is decoded.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    return load_prepared(data, _same, limits)


def load_prepared(
    data: bytes, prepare: Callable[[Image.Image], T], limits: ImageLimits = ImageLimits()
) -> Views[T]:
    """:func:`load_views`, each picture handed to ``prepare`` (e.g. the model's resize) as
    soon as it is decoded, so that at most one full-size frame is held at a time."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, header_size = _check_before_opening(data, limits)
    with _pillow_errors(fmt, header_size, limits):
        return _decode_views(data, fmt, limits, prepare, first_only=False)


def _same(image: Image.Image) -> Image.Image:
    return image


def load_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Validate and decode an uploaded image.

    Returns a fully loaded, detached ``PIL.Image.Image`` in mode ``"RGB"``, turned upright
    according to its EXIF orientation, converted to sRGB by its ICC profile or PNG gAMA, with
    any transparency flattened onto white. For animated PNG and WebP, the first frame (an
    animation over :attr:`ImageLimits.max_animation_pixels` is refused all the same);
    :func:`load_views` gives every frame and the dark-page view.

    Raises an :class:`ImageError` subclass for every input that is refused, and no other
    exception for any input bytes (``MemoryError`` excepted: that is the host's problem):
    :class:`ImageTooLargeError`, :class:`UnsupportedFormatError`,
    :class:`ImageDimensionsError` or :class:`CorruptImageError`. Each is raised ``from`` the
    underlying Pillow error where there was one.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, header_size = _check_before_opening(data, limits)
    with _pillow_errors(fmt, header_size, limits):
        views = _decode_views(data, fmt, limits, _same, first_only=True).views
        return next(view.image for view in views if view.backdrop != "black")  # over white


def read_header(data: bytes, limits: ImageLimits = ImageLimits()) -> ImageHeader:
    """Run :func:`load_image`'s checks that come before decoding (byte size, format by content,
    dimensions from our header parser and from Pillow's lazy open, decompression bombs) and
    return what the header says, without decoding a pixel.

    Raises the same :class:`ImageError` as :func:`load_image` for an input those checks refuse.
    An image that passes may still fail to decode: that is :func:`load_image`'s to say.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, header_size = _check_before_opening(data, limits)
    with _pillow_errors(fmt, header_size, limits), _open(data, fmt) as image:
        _check_dimensions(image.size, limits)
        frames = _check_frames(image, fmt, limits)
        orientation = exif_orientation(image) if fmt == "JPEG" else None
        colour = needs_colour_conversion(image.info, fmt, image.mode)
        return ImageHeader(fmt, image.width, image.height, image.mode, orientation, frames, colour)


def read_image_file(path: str | os.PathLike[str], limits: ImageLimits = ImageLimits()) -> bytes:
    """Read an image file's bytes, at most ``limits.max_bytes + 1`` of them, so an oversized
    file is refused with :class:`ImageTooLargeError` without being read whole. Errors opening or
    reading the file itself (missing, unreadable, a directory) are raised as the usual
    ``OSError``."""
    with Path(path).open("rb") as file:
        data = file.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            size = os.fstat(file.fileno()).st_size
            check_file_size(max(size, len(data)), limits, os.fspath(path))
    return data


def check_file_size(size: int, limits: ImageLimits, name: str) -> None:
    """Raise :class:`ImageTooLargeError`, naming the file or URL ``name``, when ``size`` bytes
    exceed ``limits.max_bytes``."""
    _check_byte_size(size, limits, where=f"file {name!r}")


def load_image_file(
    path: str | os.PathLike[str],
    limits: ImageLimits = ImageLimits(),
) -> Image.Image:
    """Read an image file (:func:`read_image_file`) and return :func:`load_image` of its bytes."""
    return load_image(read_image_file(path, limits), limits)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image, as Pillow reads it (EXIF, else XMP);
    1 when there is none or it cannot be read: a broken EXIF block must not reject an otherwise
    good image."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
        return value if value in ORIENTATION_TRANSPOSE else 1
    except MemoryError:
        raise
    except Exception as exc:  # hostile EXIF can make Pillow raise almost anything
        _log.debug("ignoring unusable EXIF orientation: %s: %s", type(exc).__name__, exc)
        return 1


# --- checks before decoding ---------------------------------------------------------------


def _check_before_opening(data: bytes, limits: ImageLimits) -> tuple[str, tuple[int, int] | None]:
    """Size, format and header dimensions; returns the format and the header's size if found."""
    _check_byte_size(len(data), limits, where="input")
    fmt = _require_supported_format(data)
    if fmt == "JPEG":  # first: our own header parser would skip fill bytes one at a time
        _check_jpeg_structure(data)
    header_size = _header_size(data, fmt)
    if header_size is not None:
        _check_dimensions(header_size, limits)
    return fmt, header_size


def _check_jpeg_structure(data: bytes) -> None:
    """Refuse a JPEG whose structure predicts far more decoding work than its size suggests
    (:mod:`nsfwd.jpeg_structure`: too many scans or segments, long runs of fill bytes)."""
    excess = jpeg_structure.read_structure(data).excess
    if excess is not None:
        raise ImageComplexityError(f"JPEG refused before decoding: {excess}")


@contextmanager
def _pillow_errors(
    fmt: str, header_size: tuple[int, int] | None, limits: ImageLimits
) -> Iterator[None]:
    """Turn what Pillow raises for bad data into the matching :class:`ImageError`."""
    try:
        yield
    except ImageError:
        raise
    except ColourProfileError as exc:
        raise CorruptImageError(f"{fmt} image refused: {exc}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(header_size, limits) from exc
    except _DECODE_ERRORS as exc:
        raise _corrupt_error(fmt, exc) from exc
    except MemoryError:
        raise
    except Exception as exc:
        _log.warning("unexpected %s from Pillow while decoding %s", type(exc).__name__, fmt)
        raise _corrupt_error(fmt, exc) from exc


def _check_byte_size(size: int, limits: ImageLimits, *, where: str) -> None:
    """Raise :class:`ImageTooLargeError` if ``size`` bytes exceed ``limits.max_bytes``."""
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            f"{where} is {size:,} bytes ({size / _MIB:.1f} MiB); the limit is "
            f"{limits.max_bytes:,} bytes ({limits.max_bytes / _MIB:.1f} MiB)"
        )


def _require_supported_format(data: bytes) -> str:
    """Return the sniffed format of ``data`` or raise saying what it is instead."""
    fmt = sniff_format(data)
    if fmt is not None:
        return fmt
    start_of = _truncated_signature(data)
    if start_of is not None:
        raise CorruptImageError(
            f"input is only {len(data)} bytes: the start of a {start_of} file, truncated"
        )
    if not data:
        raise UnsupportedFormatError("the input is empty (0 bytes); expected a JPEG, PNG or WebP")
    raise UnsupportedFormatError(
        f"unsupported image format: {_describe(data)}; accepted formats are JPEG, PNG and WebP"
    )


def _truncated_signature(data: bytes) -> str | None:
    """Name the supported format whose signature ``data`` is a strict beginning of, if any."""
    if len(data) < 2:
        return None
    if len(data) < len(_PNG_MAGIC) and _PNG_MAGIC.startswith(data):
        return "PNG"
    if len(data) < len(_JPEG_MAGIC) and _JPEG_MAGIC.startswith(data):
        return "JPEG"
    if len(data) < 12 and data.startswith(b"RIFF"):
        return "RIFF (WebP?)"
    return None


_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\x00\x00\x01\x00", "ICO (Windows icon)"),
    (b"8BPS", "Photoshop PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"PK\x03\x04", "a ZIP archive (or DOCX/XLSX/...)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"data:", "a data: URI (text); send the decoded bytes instead"),
    (b"iVBORw0KGgo", "base64-encoded PNG (text); send the decoded bytes instead"),
    (b"/9j/", "base64-encoded JPEG (text); send the decoded bytes instead"),
    (b"UklGR", "base64-encoded RIFF/WebP (text); send the decoded bytes instead"),
)
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)


def _describe(data: bytes) -> str:
    """Say in a few words what ``data`` (not a supported image) looks like."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _describe_iso_bmff(data)
    if data.startswith(b"RIFF"):
        return f"a RIFF container of type {_ascii(data[8:12])!r}, not WebP"
    text = _as_text(data[:1024])
    if text is not None:
        return _describe_text(text)
    return f"unrecognised binary data (first bytes: {data[:8].hex(' ')})"


def _describe_iso_bmff(data: bytes) -> str:
    """Describe an ISO base media file (HEIC, AVIF, MP4, MOV...) from its ``ftyp`` brands."""
    box_end = min(int.from_bytes(data[:4], "big"), len(data), 64)
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, box_end - 3, 4)}
    if brands & {b"avif", b"avis"}:
        return "AVIF (ISO-BMFF 'ftyp' box)"
    if brands & _HEIF_BRANDS:
        return "HEIC/HEIF (ISO-BMFF 'ftyp' box)"
    return f"an ISO-BMFF file such as MP4/MOV video (brand {_ascii(data[8:12])!r})"


def _as_text(sample: bytes) -> str | None:
    """Return ``sample`` decoded if it reads as UTF-8 text, else ``None``."""
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = sample[: len(sample) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all(ch.isprintable() or ch in "\t\n\r\f\ufeff" for ch in text):
            return text
        return None
    return None


def _describe_text(text: str) -> str:
    """Describe a text upload without echoing it."""
    head = text.lstrip("\ufeff \t\r\n").lower()
    if head.startswith("<"):
        if "<svg" in head:
            return "SVG (vector graphics are not supported)"
        if "<html" in head or head.startswith("<!doctype html"):
            return "HTML"
        return "XML"
    if head.startswith(("{", "[")):
        return "text (JSON?)"
    return "text"


def _ascii(raw: bytes) -> str:
    """Render untrusted bytes as printable ASCII for a message."""
    return raw.decode("ascii", "backslashreplace")


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Read (width, height) from the file header without Pillow, or ``None`` if not found.

    This is an early guard only: Pillow's WebP plugin builds its decoder, which sizes the
    canvas, inside ``Image.open``. The size Pillow reports is checked again afterwards.
    """
    if fmt == "PNG":
        if data[12:16] == b"IHDR" and len(data) >= 24:
            width, height = struct.unpack_from(">II", data, 16)
            return width, height
        return None
    if fmt == "WEBP":
        return _webp_size(data)
    return _jpeg_size(data)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Read the canvas size of a WebP file from its first chunk (VP8X, VP8L or VP8)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Find the first start-of-frame marker of a JPEG and return its (width, height).

    Bytes between segments that are not a marker are skipped, as libjpeg and Pillow skip them.
    """
    pos = 2  # after SOI
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return None
        marker = data[pos + 1]
        if marker in (0x00, 0xFF):  # a stuffed zero (garbage here) or a fill byte
            pos += 1
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
        elif marker in _JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    """Raise :class:`ImageDimensionsError` unless ``size`` is within ``limits``."""
    width, height = size
    problems = [
        f"{name} {value} px is below the minimum of {limits.min_side} px"
        for name, value in (("width", width), ("height", height))
        if value < limits.min_side
    ] + [
        f"{name} {value} px is above the maximum of {limits.max_side} px"
        for name, value in (("width", width), ("height", height))
        if value > limits.max_side
    ]
    if width * height > limits.max_pixels:
        problems.append(
            f"{width * height:,} pixels is above the maximum of {limits.max_pixels:,} pixels"
        )
    if problems:
        raise ImageDimensionsError(
            f"image is {width}x{height} px: {'; '.join(problems)} ({limits.describe()})"
        )


def _bomb_error(size: tuple[int, int] | None, limits: ImageLimits) -> ImageDimensionsError:
    """Build the error for an image that Pillow's decompression-bomb guard refused."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    claimed = "too many pixels"
    # Our parser reads the first JPEG frame header; Pillow uses the last, so check it fits.
    if size is not None and size[0] * size[1] > limit:
        claimed = f"{size[0]}x{size[1]} px"
    return ImageDimensionsError(
        f"image header claims {claimed}, over Pillow's decompression-bomb limit of "
        f"{limit:,} pixels; refused as a possible decompression bomb "
        f"({limits.describe()})"
    )


def _png_chunk_problem(data: bytes) -> str | None:
    """Walk the chunks of a PNG; say what is wrong (bad CRC, truncation, no IEND) or ``None``."""
    view = memoryview(data)
    pos = len(_PNG_MAGIC)
    while True:
        if pos + 8 > len(data):
            return f"the file ends at byte {len(data)} without an IEND chunk (truncated)"
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length + 4
        if end > len(data):
            return f"chunk {_ascii(kind)!r} at byte {pos} runs past the end of the file (truncated)"
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"chunk {_ascii(kind)!r} at byte {pos} has a bad CRC"
        if kind == b"IEND":
            return None
        pos = end


# --- decoding -----------------------------------------------------------------------------


def _decode_views(
    data: bytes,
    fmt: str,
    limits: ImageLimits,
    prepare: Callable[[Image.Image], T],
    *,
    first_only: bool,
) -> Views[T]:
    """Open, check, decode the frames (the first only, or all), orient, convert and
    ``prepare`` them; Pillow errors propagate."""
    with _open(data, fmt) as image:
        _check_dimensions(image.size, limits)
        frames = _check_frames(image, fmt, limits)
        if fmt == "PNG" and (problem := _png_chunk_problem(data)) is not None:
            raise CorruptImageError(f"PNG data is corrupt: {problem}")
        views: list[View[T]] = []
        for index in [0] if first_only else frames_to_judge(frames):
            image.seek(index)  # decodes the frames before it: each is drawn over the last
            image.load()
            for view in frame_views(_upright(image), index, fmt):  # new, detached images
                views.append(View(prepare(view.image), view.frame, view.backdrop))
    return Views(views, frames)


def _check_frames(image: ImageFile.ImageFile, fmt: str, limits: ImageLimits) -> int:
    """The frames viewers see (a JPEG's extra MPO images are not shown), within the budget."""
    frames = getattr(image, "n_frames", 1) if fmt in ("PNG", "WEBP") else 1
    pixels = image.width * image.height * frames
    if pixels > limits.max_animation_pixels:
        raise ImageDimensionsError(
            f"animation is {image.width}x{image.height} px x {frames:,} frames = {pixels:,} "
            f"pixels to decode, above the limit of {limits.max_animation_pixels:,} pixels "
            f"(width x height x frames)"
        )
    return frames


def _open(data: bytes, fmt: str) -> ImageFile.ImageFile:
    """``Image.open`` restricted to ``fmt``, with decompression-bomb warnings as exceptions."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(BytesIO(data), formats=[fmt])


def _upright(image: Image.Image) -> Image.Image:
    """Return a detached copy of ``image`` turned as its EXIF orientation says
    (:func:`exif_orientation`; the tensor decode path turns its pixels by the same value)."""
    method = ORIENTATION_TRANSPOSE.get(exif_orientation(image))
    if method is None:
        return image.copy()
    try:
        return ImageOps.exif_transpose(image)  # turns by the same tag and drops it from the copy
    except MemoryError:
        raise
    except Exception as exc:  # a tag that reads well in an EXIF block Pillow cannot rewrite
        _log.debug(
            "EXIF orientation applied without rewriting EXIF: %s: %s", type(exc).__name__, exc
        )
        return image.transpose(method)


def _to_rgb(image: Image.Image, fmt: str = "") -> Image.Image:
    """A loaded image of any Pillow mode as 8-bit RGB in sRGB, flattened onto white where it
    is transparent (a fully transparent pixel is always white)."""
    return next(view.image for view in frame_views(image, 0, fmt) if view.backdrop != "black")


def _corrupt_error(fmt: str, exc: BaseException) -> CorruptImageError:
    """Build the error for data that Pillow could not parse or decode."""
    if isinstance(exc, UnidentifiedImageError):  # its message is just the BytesIO's repr
        detail = "Pillow cannot parse its header"
    else:
        detail = str(exc) or type(exc).__name__
    return CorruptImageError(f"{fmt} data is truncated or corrupt and cannot be decoded ({detail})")
