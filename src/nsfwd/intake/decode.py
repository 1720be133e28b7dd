"""Decoding: bytes in, what a viewer sees out (:class:`~nsfwd.intake.views.Views`), or a typed
error saying why not.

:func:`load_views` (or :func:`load_prepared`) decodes every judged picture of a file (its
frames, pages, images and thumbnails, :mod:`.pictures`; past the frame budget, the frames
:mod:`.frames` picks by time on screen and distinctness), upright as browsers turn it, in the
colours browsers show and as stored where those differ (:mod:`.colour`), over the pages its
transparency calls for (:mod:`.views`); :func:`load_image` gives the first picture over
white. The checks run cheapest first, and nothing is decoded before it is known to be small
enough (:mod:`.limits`, :mod:`.sniff`, :mod:`.headers` and each format's own reader).
:func:`read_header` runs the checks that come before decoding alone, for decoders that take
over from there. Each format is opened by its :class:`~nsfwd.intake.source.Source`:
HEIF by :mod:`.heif`, AVIF by :mod:`.avif`, the rest by Pillow (:mod:`.source`).
docs/ARCHITECTURE.md ("Image intake") gives the order of the checks and the reasons. Nothing
here changes Pillow's global state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TypeVar

from PIL import Image, UnidentifiedImageError

from nsfwd.intake import heif
from nsfwd.intake.avif import AvifSource
from nsfwd.intake.colour import (
    ColourProfileError,
    ColourTags,
    Conversion,
    colour_model,
    display_conversion,
)
from nsfwd.intake.errors import CorruptImageError, ImageDimensionsError, ImageError
from nsfwd.intake.frames import FrameFacts, frame_budget, signature
from nsfwd.intake.headers import check_jpeg_structure, read_layout
from nsfwd.intake.heif import HeifSource
from nsfwd.intake.limits import ImageLimits, check_byte_size
from nsfwd.intake.pictures import Layout, Picture
from nsfwd.intake.sniff import require_supported_format
from nsfwd.intake.source import (
    DECODE_ERRORS,
    ORIENTATION_TRANSPOSE,
    PillowSource,
    Source,
    exif_orientation,
)
from nsfwd.intake.views import View, Views, frame_views, views_per_frame

__all__ = [
    "ORIENTATION_TRANSPOSE",
    "ImageHeader",
    "exif_orientation",
    "judged_pictures",
    "load_image",
    "load_prepared",
    "load_thumbnails",
    "load_views",
    "open_pictures",
    "read_header",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")
OWN_DECODER_VIEWS: Final = 6
"""The most views a picture from HEIF's or AVIF's own decoder can make (three pages where it is
translucent, in converted and stored colours), for its frame budget: its mode and colour tags
are known only once a picture is decoded."""


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
    """The orientation :func:`load_image` applies (1 when none), as browsers follow it: a
    JPEG's EXIF, a PNG's eXIf chunk before its image data; never XMP, nor the EXIF of a WebP,
    GIF or BMP. 1 for TIFF (Pillow turns its pages as it loads them) and ``None`` for HEIF and
    AVIF, whose decoders turn the picture themselves."""
    frames: int = 1
    """Frames, pages or images in the file (animated PNG, WebP, GIF and AVIF; a TIFF's pages;
    a HEIF's top-level images; an APNG's default image counts), thumbnails not counted."""
    colour_managed: bool = False
    """Whether it displays in other colours than its stored pixels (:mod:`.colour`): decoders
    that do not convert colour must leave it to Pillow."""
    thumbnails: int = 0
    """Thumbnails that are judged with the image (a JPEG's EXIF thumbnail, a HEIF's)."""


def load_views(data: bytes, limits: ImageLimits = ImageLimits()) -> Views[Image.Image]:
    """Validate and decode an uploaded image into what viewers see (:mod:`.views`):
    every judged picture (frames, pages and images: all up to the frame budget, else those
    :mod:`.frames` picks by time on screen and distinctness; an APNG's default image is frame
    0; then every thumbnail), upright as browsers turn it, in the colours browsers show (and
    as stored, where those differ), over white and black where it is not fully opaque (and
    mid-grey where partly so). Every frame of an animation is decoded, so corrupt data in any
    frame refuses the image.

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
            image, facts = source.image, source.facts
            colour = display_conversion(facts.colour, colour_model(image.mode)) is not None
            return ImageHeader(fmt, image.width, image.height, image.mode, facts.orientation,
                               frames, colour, thumbnails)  # fmt: skip
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
        chosen = pictures[:1] if first_only else judged_pictures(data, source, limits)
        views: list[View[T]] = []
        for picture in chosen:
            if kinds is not None and picture.kind not in kinds:
                continue
            image = source.load(picture)
            if image is None:
                continue
            conversion = _conversion(source, image)
            for view in frame_views(image, picture.index, conversion, picture.kind):
                views.append(view.with_image(prepare(view.image)))  # new, detached images
    return Views(views, len(pictures))


def judged_pictures(data: bytes, source: Source, limits: ImageLimits) -> list[Picture]:
    """The pictures of ``source`` (opened from ``data``) that are judged, for
    :func:`load_views` and for what must treat the same ones (a redacted copy): every one
    within the frame budget; past it, by the facts of each frame (time on screen and a
    signature, :mod:`.frames`), gathered in a first pass over a second opening of the file,
    where every frame is decoded anyway (an animation; pages and images are chosen by their
    order alone, undecoded); then the thumbnails."""
    layout = source.layout
    budget = _budget(source)
    sequence = [picture for picture in layout.pictures if picture.kind != "thumbnail"]
    if len(sequence) <= budget or not layout.decodes_all:
        return layout.to_judge(budget)
    with _open_source(data, source.format, layout, limits) as first_pass:
        facts = [_frame_facts(first_pass, picture, len(sequence)) for picture in sequence]
    return layout.to_judge(budget, facts)


def _frame_facts(source: Source, picture: Picture, count: int) -> FrameFacts:
    """What the frame rule knows of one decoded frame (:class:`~nsfwd.intake.frames.FrameFacts`)."""
    image = source.load(picture)
    assert image is not None  # only a thumbnail may not decode
    duration = picture.duration_ms
    if isinstance(source, PillowSource):  # Pillow's delay and loop count, read on loading
        duration = _frame_duration(source.image, picture.index, count)
    return FrameFacts(picture.index, duration or 0.0, signature(image))


def _budget(source: Source) -> int:
    """Frames judged at most of ``source``: as many as fit the picture budget, each making the
    most views its mode and colour tags can (:func:`~nsfwd.intake.views.views_per_frame`)."""
    if not isinstance(source, PillowSource):
        return frame_budget(OWN_DECODER_VIEWS)
    image = source.image
    conversion = display_conversion(source.facts.colour, colour_model(image.mode))
    return frame_budget(views_per_frame(image.mode, "transparency" in image.info, conversion))


def _conversion(source: Source, image: Image.Image) -> Conversion | None:
    """How a decoded picture's colours display: by its file's tags (:func:`~nsfwd.intake.source.
    file_facts`), or for HEIF's and AVIF's own decoders, by the ICC profile they hand over."""
    if isinstance(source, PillowSource):
        tags = source.facts.colour
    else:
        tags = ColourTags(icc_profile=image.info.get("icc_profile") or None)
    return display_conversion(tags, colour_model(image.mode))


def _frame_duration(image: Image.Image, index: int, count: int) -> float:
    """How long the loaded frame ``index`` of ``count`` stays on screen, as its file says (ms;
    ``inf`` for the last frame of an animation that stops). Pillow gives APNG, WebP and GIF
    frames ``duration`` and the file a ``loop`` count (0: forever)."""
    if index == count - 1 and image.info.get("loop", 0) not in (0, None):
        return math.inf
    duration = image.info.get("duration")
    return float(duration) if isinstance(duration, int | float) else 0.0


def _corrupt_error(fmt: str, exc: BaseException) -> CorruptImageError:
    """Build the error for data that the decoder could not parse or decode."""
    if isinstance(exc, UnidentifiedImageError):  # its message is just the BytesIO's repr
        detail = "Pillow cannot parse its header"
    else:
        detail = str(exc) or type(exc).__name__
    return CorruptImageError(f"{fmt} data is truncated or corrupt and cannot be decoded ({detail})")
