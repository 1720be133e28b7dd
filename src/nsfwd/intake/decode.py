"""Decoding: bytes in, what a viewer sees out (:class:`~nsfwd.intake.views.Views`), or a typed
error saying why not.

:func:`load_views` (or :func:`load_prepared`) decodes every judged frame (:mod:`.frames`),
upright, in sRGB (:mod:`.colour`), over white and black where it is transparent (:mod:`.views`);
:func:`load_image` gives the first frame over white. The checks run cheapest first, and
nothing is decoded before it is known to be small enough (:mod:`.limits`, :mod:`.sniff`,
:mod:`.headers`). :func:`read_header` runs the checks that come before decoding alone, for
decoders that take over from there. docs/ARCHITECTURE.md ("Image intake") gives the order of
the checks and the reasons. Nothing here changes Pillow's global state.
"""

from __future__ import annotations

import logging
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Final, TypeVar

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from nsfwd.intake.colour import ColourProfileError, needs_colour_conversion
from nsfwd.intake.errors import CorruptImageError, ImageDimensionsError, ImageError
from nsfwd.intake.frames import frames_to_judge
from nsfwd.intake.headers import check_jpeg_structure, header_size, png_chunk_problem
from nsfwd.intake.limits import (
    ImageLimits,
    check_byte_size,
    check_dimensions,
    check_pixel_budget,
)
from nsfwd.intake.sniff import require_supported_format
from nsfwd.intake.views import View, Views, frame_views

_log = logging.getLogger(__name__)
T = TypeVar("T")

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


def load_views(data: bytes, limits: ImageLimits = ImageLimits()) -> Views[Image.Image]:
    """Validate and decode an uploaded image into what viewers see (:mod:`.views`):
    every judged frame (all up to :data:`~nsfwd.intake.frames.MAX_JUDGED_FRAMES`, else that many
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
    fmt, size = _check_before_opening(data, limits)
    with _pillow_errors(fmt, size, limits):
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
    fmt, size = _check_before_opening(data, limits)
    with _pillow_errors(fmt, size, limits):
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
    fmt, size = _check_before_opening(data, limits)
    with _pillow_errors(fmt, size, limits), _open(data, fmt) as image:
        check_dimensions(image.size, limits)
        frames = _check_frames(image, fmt, limits)
        orientation = exif_orientation(image) if fmt == "JPEG" else None
        colour = needs_colour_conversion(image.info, fmt, image.mode)
        return ImageHeader(fmt, image.width, image.height, image.mode, orientation, frames, colour)


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
    check_byte_size(len(data), limits, where="input")
    fmt = require_supported_format(data)
    if fmt == "JPEG":  # first: our own header parser would skip fill bytes one at a time
        check_jpeg_structure(data)
    size = header_size(data, fmt)
    if size is not None:
        check_dimensions(size, limits)
    return fmt, size


@contextmanager
def _pillow_errors(fmt: str, size: tuple[int, int] | None, limits: ImageLimits) -> Iterator[None]:
    """Turn what Pillow raises for bad data into the matching :class:`ImageError`."""
    try:
        yield
    except ImageError:
        raise
    except ColourProfileError as exc:
        raise CorruptImageError(f"{fmt} image refused: {exc}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(size, limits) from exc
    except _DECODE_ERRORS as exc:
        raise _corrupt_error(fmt, exc) from exc
    except MemoryError:
        raise
    except Exception as exc:
        _log.warning("unexpected %s from Pillow while decoding %s", type(exc).__name__, fmt)
        raise _corrupt_error(fmt, exc) from exc


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
        check_dimensions(image.size, limits)
        frames = _check_frames(image, fmt, limits)
        if fmt == "PNG" and (problem := png_chunk_problem(data)) is not None:
            raise CorruptImageError(f"PNG data is corrupt: {problem}")
        views: list[View[T]] = []
        for index in [0] if first_only else frames_to_judge(frames):
            image.seek(index)  # decodes the frames before it: each is drawn over the last
            image.load()
            for view in frame_views(_upright(image), index, fmt):  # new, detached images
                views.append(View(prepare(view.image), view.frame, view.backdrop, view.size))
    return Views(views, frames)


def _check_frames(image: ImageFile.ImageFile, fmt: str, limits: ImageLimits) -> int:
    """The frames viewers see (a JPEG's extra MPO images are not shown), within the budget."""
    frames = getattr(image, "n_frames", 1) if fmt in ("PNG", "WEBP") else 1
    check_pixel_budget(image.width, image.height, frames, limits)
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


def _corrupt_error(fmt: str, exc: BaseException) -> CorruptImageError:
    """Build the error for data that Pillow could not parse or decode."""
    if isinstance(exc, UnidentifiedImageError):  # its message is just the BytesIO's repr
        detail = "Pillow cannot parse its header"
    else:
        detail = str(exc) or type(exc).__name__
    return CorruptImageError(f"{fmt} data is truncated or corrupt and cannot be decoded ({detail})")
