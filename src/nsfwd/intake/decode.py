"""Decoding: bytes in, what a viewer sees out (:class:`~nsfwd.intake.views.Views`), or a typed
error saying why not.

:func:`load_views` (or :func:`load_prepared`) decodes every judged picture of a file (its
frames, pages, images and thumbnails, :mod:`.pictures`), upright, in sRGB (:mod:`.colour`),
over white and black where it is transparent (:mod:`.views`); :func:`load_image` gives the
first picture over white. The checks run cheapest first, and nothing is decoded before it is
known to be small enough (:mod:`.limits`, :mod:`.sniff`, :mod:`.headers` and each format's
own reader). :func:`read_header` runs the checks that come before decoding alone, for decoders
that take over from there. Each format is opened by its :class:`~nsfwd.intake.source.Source`:
HEIF by :mod:`.heif`, AVIF by :mod:`.avif`, the rest by Pillow (:mod:`.source`).
docs/ARCHITECTURE.md ("Image intake") gives the order of the checks and the reasons. Nothing
here changes Pillow's global state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from nsfwd.intake import heif
from nsfwd.intake.avif import AvifSource
from nsfwd.intake.colour import ColourProfileError, needs_colour_conversion
from nsfwd.intake.errors import CorruptImageError, ImageDimensionsError, ImageError
from nsfwd.intake.headers import check_jpeg_structure, read_layout
from nsfwd.intake.heif import HeifSource
from nsfwd.intake.limits import ImageLimits, check_byte_size
from nsfwd.intake.pictures import Layout
from nsfwd.intake.sniff import require_supported_format
from nsfwd.intake.source import (
    DECODE_ERRORS,
    ORIENTATION_TRANSPOSE,
    PillowSource,
    Source,
    exif_orientation,
)
from nsfwd.intake.views import View, Views, frame_views

__all__ = [
    "ORIENTATION_TRANSPOSE",
    "ImageHeader",
    "exif_orientation",
    "load_image",
    "load_prepared",
    "load_thumbnails",
    "load_views",
    "open_pictures",
    "read_header",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ImageHeader:
    """What :func:`read_header` learnt about an image without decoding its pixels."""

    format: str
    """One of :data:`~nsfwd.intake.sniff.SUPPORTED_FORMATS`, from the content."""
    width: int
    height: int
    mode: str
    """Pillow's mode for the stored pixels (for JPEG: ``"L"``, ``"RGB"`` or ``"CMYK"``;
    ``"RGB"`` for HEIF and AVIF, which their decoders convert)."""
    orientation: int | None
    """The EXIF orientation :func:`load_image` applies (1 when none), for JPEG, whose EXIF
    comes before the pixels; ``None`` for the other formats, whose EXIF Pillow reads only
    while decoding (or, for HEIF and AVIF, whose decoders turn the picture themselves)."""
    frames: int = 1
    """Frames, pages or images in the file (animated PNG, WebP, GIF and AVIF; a TIFF's pages;
    a HEIF's top-level images; an APNG's default image counts), thumbnails not counted."""
    colour_managed: bool = False
    """Whether it displays in other colours than its stored pixels (an ICC profile other than
    sRGB's, a PNG gAMA): decoders that do not convert colour must leave it to Pillow."""
    thumbnails: int = 0
    """Thumbnails that are judged with the image (a JPEG's EXIF thumbnail, a HEIF's)."""


def load_views(data: bytes, limits: ImageLimits = ImageLimits()) -> Views[Image.Image]:
    """Validate and decode an uploaded image into what viewers see (:mod:`.views`):
    every judged picture (frames, pages and images: all up to
    :data:`~nsfwd.intake.frames.MAX_JUDGED_FRAMES`, else that many spread evenly; an APNG's
    default image is frame 0; then every thumbnail), upright, in sRGB, and over white and over
    black where it is not fully opaque. Every frame of an animation is decoded, so corrupt
    data in any frame refuses the image.

    Raises what :func:`load_image` raises; a file over :attr:`ImageLimits.max_frames` pictures
    or :attr:`ImageLimits.max_animation_pixels` is an :class:`ImageDimensionsError`, before
    any picture is decoded.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    return load_prepared(data, _same, limits)


def load_prepared(
    data: bytes, prepare: Callable[[Image.Image], T], limits: ImageLimits = ImageLimits()
) -> Views[T]:
    """:func:`load_views`, each picture handed to ``prepare`` (e.g. the model's resize) as
    soon as it is decoded, so that at most one full-size picture is held at a time."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, layout = _check_before_opening(data, limits)
    with _decode_errors(fmt, layout, limits):
        return _decode_views(data, fmt, layout, limits, prepare, first_only=False)


def load_thumbnails(
    data: bytes, prepare: Callable[[Image.Image], T], limits: ImageLimits = ImageLimits()
) -> list[View[T]]:
    """The views of a file's thumbnails alone (:func:`load_prepared`'s last ones), for a
    decoder that does the image itself (the tensor path). Raises what
    :func:`load_prepared` raises."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, layout = _check_before_opening(data, limits)
    with _decode_errors(fmt, layout, limits):
        kinds = {"thumbnail"}
        return _decode_views(
            data, fmt, layout, limits, prepare, first_only=False, kinds=kinds
        ).views


def _same(image: Image.Image) -> Image.Image:
    return image


def load_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Validate and decode an uploaded image.

    Returns a fully loaded, detached ``PIL.Image.Image`` in mode ``"RGB"``, turned upright
    (by its EXIF orientation, or a HEIF's own turns), converted to sRGB by its ICC profile or
    PNG gAMA, with any transparency flattened onto white. For a file of several pictures, the
    first (an animation's first frame, a TIFF's first page, a HEIF's primary image); a file
    over the limits is refused all the same; :func:`load_views` gives every picture and the
    dark-page view.

    Raises an :class:`ImageError` subclass for every input that is refused, and no other
    exception for any input bytes (``MemoryError`` excepted: that is the host's problem):
    :class:`ImageTooLargeError`, :class:`UnsupportedFormatError`,
    :class:`ImageDimensionsError`, :class:`ImageComplexityError` or
    :class:`CorruptImageError`. Each is raised ``from`` the underlying decoder error where
    there was one.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, layout = _check_before_opening(data, limits)
    with _decode_errors(fmt, layout, limits):
        views = _decode_views(data, fmt, layout, limits, _same, first_only=True).views
        return next(view.image for view in views if view.backdrop != "black")  # over white


def read_header(data: bytes, limits: ImageLimits = ImageLimits()) -> ImageHeader:
    """Run :func:`load_image`'s checks that come before decoding (byte size, format by content,
    the file's structure and the sizes it declares from our own parsers and from the
    decoder's lazy open, the pixel budget, decompression bombs) and return what the header
    says, without decoding a pixel.

    Raises the same :class:`ImageError` as :func:`load_image` for an input those checks refuse.
    An image that passes may still fail to decode: that is :func:`load_image`'s to say.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, layout = _check_before_opening(data, limits)
    with _decode_errors(fmt, layout, limits), _open_source(data, fmt, layout, limits) as source:
        pictures = source.layout.pictures
        thumbnails = sum(1 for picture in pictures if picture.kind == "thumbnail")
        frames = len(pictures) - thumbnails
        if isinstance(source, PillowSource):
            image = source.image
            orientation = exif_orientation(image) if fmt == "JPEG" else None
            colour = needs_colour_conversion(image.info, fmt, image.mode)
            return ImageHeader(fmt, image.width, image.height, image.mode, orientation, frames,
                               colour, thumbnails)  # fmt: skip
        width, height = pictures[0].size or (0, 0)
        return ImageHeader(fmt, width, height, "RGB", None, frames, True, thumbnails)


def open_pictures(data: bytes, limits: ImageLimits = ImageLimits()) -> Source:
    """Run :func:`read_header`'s checks and open the file's decoder: its pictures
    (``layout``), each decoded upright by ``load``, for a caller that handles the pictures
    themselves (a redacted copy). Raises what :func:`read_header` raises; the caller turns the
    decoder's errors while loading into :class:`ImageError`."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    fmt, layout = _check_before_opening(data, limits)
    with _decode_errors(fmt, layout, limits):
        return _open_source(data, fmt, layout, limits)


# --- checks before decoding ---------------------------------------------------------------


def _check_before_opening(data: bytes, limits: ImageLimits) -> tuple[str, Layout]:
    """Size, format, and the structure its header describes, checked against ``limits``."""
    check_byte_size(len(data), limits, where="input")
    fmt = require_supported_format(data)
    if fmt == "JPEG":  # first: our own header parser would skip fill bytes one at a time
        check_jpeg_structure(data)
    layout = _read_layout(data, fmt, limits)
    layout.check(limits)
    return fmt, layout


def _read_layout(data: bytes, fmt: str, limits: ImageLimits) -> Layout:
    """The format's own reader of its structure (see :func:`~nsfwd.intake.headers.read_layout`)."""
    if fmt in ("HEIF", "AVIF"):
        return heif.read(data, fmt, limits)[1]
    return read_layout(data, fmt, limits)


def _open_source(data: bytes, fmt: str, layout: Layout, limits: ImageLimits) -> Source:
    """The decoder for ``fmt``, opened (its structure read and checked again, no pixel
    decoded)."""
    if fmt == "HEIF":
        return HeifSource(data, limits)
    if fmt == "AVIF":
        return AvifSource(data, limits)
    return PillowSource(data, fmt, layout, limits)


@contextmanager
def _decode_errors(fmt: str, layout: Layout, limits: ImageLimits) -> Iterator[None]:
    """Turn what the decoders raise for bad data into the matching :class:`ImageError`."""
    try:
        yield
    except ImageError:
        raise
    except ColourProfileError as exc:
        raise CorruptImageError(f"{fmt} image refused: {exc}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(layout.size, limits) from exc
    except DECODE_ERRORS as exc:
        raise _corrupt_error(fmt, exc) from exc
    except MemoryError:
        raise
    except Exception as exc:
        _log.warning("unexpected %s from the decoder while decoding %s", type(exc).__name__, fmt)
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
    layout: Layout,
    limits: ImageLimits,
    prepare: Callable[[Image.Image], T],
    *,
    first_only: bool,
    kinds: set[str] | None = None,
) -> Views[T]:
    """Open, check, decode the pictures (the first only, or those judged), orient, convert
    and ``prepare`` them; decoder errors propagate."""
    with _open_source(data, fmt, layout, limits) as source:
        pictures = source.layout.pictures
        chosen = pictures[:1] if first_only else source.layout.to_judge()
        views: list[View[T]] = []
        for picture in chosen:
            if kinds is not None and picture.kind not in kinds:
                continue
            image = source.load(picture)
            if image is None:
                continue
            for view in frame_views(image, picture.index, fmt):  # new, detached images
                views.append(
                    View(prepare(view.image), view.frame, view.backdrop, view.size, picture.kind)
                )
    return Views(views, len(pictures))


def _corrupt_error(fmt: str, exc: BaseException) -> CorruptImageError:
    """Build the error for data that the decoder could not parse or decode."""
    if isinstance(exc, UnidentifiedImageError):  # its message is just the BytesIO's repr
        detail = "Pillow cannot parse its header"
    else:
        detail = str(exc) or type(exc).__name__
    return CorruptImageError(f"{fmt} data is truncated or corrupt and cannot be decoded ({detail})")
