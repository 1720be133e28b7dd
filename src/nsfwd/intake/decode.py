"""Decoding: bytes in, what a viewer sees out (:class:`~nsfwd.intake.views.Views`), or a typed
error saying why not.

:func:`load_views` (or :func:`load_prepared`) decodes every judged frame (:mod:`.frames`),
upright, in the colours browsers show (:mod:`.colour`), over the pages its transparency calls
for (:mod:`.views`); :func:`load_image` gives the first frame over white. The checks run
cheapest first, and nothing is decoded before it is known to be small enough (:mod:`.limits`,
:mod:`.sniff`, :mod:`.headers`). :func:`read_header` runs the checks that come before decoding
alone, for decoders that take over from there. docs/ARCHITECTURE.md ("Image intake") gives the
order of the checks and the reasons. Nothing here changes Pillow's global state.

What is per format is kept to :func:`_file_facts` (a file's colour tags and orientation, as
browsers read them), :func:`_frame_duration` (a frame's delay) and :func:`_full_depth` (PNG's
16-bit colour key); the rest is the same for every format, so that a new animated format only
has to feed these.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Final, TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from nsfwd.intake.colour import (
    ColourProfileError,
    ColourTags,
    Conversion,
    colour_model,
    display_conversion,
)
from nsfwd.intake.errors import CorruptImageError, ImageDimensionsError, ImageError
from nsfwd.intake.frames import FrameFacts, frame_budget, frames_to_judge, signature
from nsfwd.intake.headers import check_jpeg_structure, header_size, png_chunk_problem, png_tags
from nsfwd.intake.limits import (
    ImageLimits,
    check_byte_size,
    check_dimensions,
    check_pixel_budget,
)
from nsfwd.intake.sniff import require_supported_format
from nsfwd.intake.views import View, Views, frame_views, views_per_frame

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
_ORIENTATION_KEYS: Final = ("exif", "xmp", "XML:com.adobe.xmp")
"""Where Pillow keeps what ``getexif`` reads an orientation from."""
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
    orientation: int
    """The orientation :func:`load_image` applies (1 when none), as browsers follow it: a
    JPEG's EXIF, a PNG's eXIf chunk before its image data; never XMP, nor a WebP's EXIF."""
    frames: int = 1
    """Frames in the file (animated PNG and WebP; an APNG's default image counts)."""
    colour_managed: bool = False
    """Whether it displays in other colours than its stored pixels (:mod:`.colour`): decoders
    that do not convert colour must leave it to Pillow."""


def load_views(data: bytes, limits: ImageLimits = ImageLimits()) -> Views[Image.Image]:
    """Validate and decode an uploaded image into what viewers see (:mod:`.views`):
    every judged frame (all up to the frame budget, else those :mod:`.frames` picks by time on
    screen and distinctness; an APNG's default image is frame 0), upright, in the colours
    browsers show (and as stored, where those differ), over white and black where it is not
    fully opaque (and mid-grey where partly so). Every frame is decoded, so corrupt data in
    any frame refuses the image.

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
    as browsers turn it (:attr:`ImageHeader.orientation`), in the colours browsers show
    (:mod:`.colour`), with any transparency flattened onto white. For animated PNG and WebP,
    the first frame (an animation over :attr:`ImageLimits.max_animation_pixels` is refused all
    the same); :func:`load_views` gives every picture a viewer may see.

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
        facts = _file_facts(data, image, fmt)
        colour = display_conversion(facts.colour, colour_model(image.mode)) is not None
        return ImageHeader(
            fmt, image.width, image.height, image.mode, facts.orientation, frames, colour
        )


def exif_orientation(exif: bytes | None) -> int:
    """The orientation (1..8) an EXIF block (with or without its ``Exif\\0\\0`` prefix) holds;
    1 when there is none or it cannot be read: a broken EXIF block must not reject an otherwise
    good image. XMP is not read: browsers do not turn images by it."""
    if not exif:
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": what we answer 1 for
            parsed = Image.Exif()
            parsed.load(exif)
            value = parsed.get(ExifTags.Base.Orientation, 1)
        return value if value in ORIENTATION_TRANSPOSE else 1
    except MemoryError:
        raise
    except Exception as exc:  # hostile EXIF can make Pillow raise almost anything
        _log.debug("ignoring unusable EXIF orientation: %s: %s", type(exc).__name__, exc)
        return 1


@dataclass(frozen=True)
class _FileFacts:
    """What browsers read of a file before its pixels: its colour tags and orientation."""

    colour: ColourTags
    orientation: int
    full_depth_key: bool = False
    """A 16-bit truecolour PNG with a colour key (:func:`_full_depth`)."""


def _file_facts(data: bytes, image: ImageFile.ImageFile, fmt: str) -> _FileFacts:
    """A just-opened file's colour tags and orientation, as browsers read them: a JPEG's ICC
    profile and EXIF (not XMP); a PNG's chunks before its image data (the first ``iCCP``, an
    ``eXIf`` there); a WebP's ICC profile (browsers do not turn WebP by its EXIF)."""
    if fmt == "PNG":
        tags = png_tags(data)
        orientation = exif_orientation(tags.exif)
        key = tags.depth == 16 and tags.colour_type == 2 and tags.colour_key
        return _FileFacts(tags.colour, orientation, full_depth_key=key)
    colour = ColourTags(icc_profile=image.info.get("icc_profile") or None)
    if fmt == "JPEG":
        return _FileFacts(colour, exif_orientation(image.info.get("exif")))
    return _FileFacts(colour, 1)


def _frame_duration(image: Image.Image, index: int, count: int) -> float:
    """How long the loaded frame ``index`` of ``count`` stays on screen, as its file says (ms;
    ``inf`` for the last frame of an animation that stops). Pillow gives APNG, WebP and GIF
    frames ``duration`` and the file a ``loop`` count (0: forever)."""
    if index == count - 1 and image.info.get("loop", 0) not in (0, None):
        return math.inf
    duration = image.info.get("duration")
    return float(duration) if isinstance(duration, int | float) else 0.0


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
    """Open, check, decode the frames (the first only, or those judged), orient, convert and
    ``prepare`` them; Pillow errors propagate."""
    with _open(data, fmt) as image:
        check_dimensions(image.size, limits)
        frames = _check_frames(image, fmt, limits)
        facts = _file_facts(data, image, fmt)  # before anything loads: Pillow reads on
        if fmt == "PNG" and (problem := png_chunk_problem(data)) is not None:
            raise CorruptImageError(f"PNG data is corrupt: {problem}")
        if facts.full_depth_key and frames > 1:
            raise CorruptImageError(
                "a 16-bit animated PNG with a colour key (tRNS) is not supported; save it with "
                "an alpha channel or at 8 bits"
            )
        conversion = display_conversion(facts.colour, colour_model(image.mode))
        judged = [0] if first_only else _judged_frames(image, frames, _budget(image, conversion))
        views: list[View[T]] = []
        for index in judged:
            image.seek(index)  # decodes the frames before it: each is drawn over the last
            image.load()
            shown = _upright(_full_depth(image, data) if facts.full_depth_key else image, facts)
            for view in frame_views(shown, index, conversion):  # new, detached images
                views.append(view.with_image(prepare(view.image)))
    return Views(views, frames)


def judged_frames(data: bytes, image: ImageFile.ImageFile, fmt: str, count: int) -> list[int]:
    """The indices of the frames :func:`load_views` judges of ``image`` (just opened from
    ``data``, a ``fmt`` file of ``count`` frames), for what must treat the same frames (a
    redacted copy). Loads frames to learn their facts where there are more than the budget:
    seek back to the frame wanted afterwards."""
    conversion = display_conversion(_file_facts(data, image, fmt).colour, colour_model(image.mode))
    return _judged_frames(image, count, _budget(image, conversion))


def _budget(image: Image.Image, conversion: Conversion | None) -> int:
    """Frames judged at most of ``image``: as many as fit the picture budget, each making the
    most views its mode and ``conversion`` can (:func:`~nsfwd.intake.views.views_per_frame`)."""
    return frame_budget(views_per_frame(image.mode, "transparency" in image.info, conversion))


def _judged_frames(image: ImageFile.ImageFile, count: int, budget: int) -> list[int]:
    """Which of ``count`` frames are judged (:func:`~nsfwd.intake.frames.frames_to_judge`):
    all within the budget, else by the facts of every frame, gathered in a first pass."""
    if count <= budget:
        return list(range(count))
    facts = []
    for index in range(count):
        image.seek(index)
        image.load()
        facts.append(FrameFacts(index, _frame_duration(image, index, count), signature(image)))
    return frames_to_judge(facts, budget)


def _full_depth(image: ImageFile.ImageFile, data: bytes) -> Image.Image:
    """A 16-bit truecolour PNG with a colour key, as libpng shows it: the high bytes for
    colour, transparent exactly where all three 16-bit samples equal the key. Pillow reduces
    the samples to 8 bits first, so pixels that differ from the key only in their low byte
    (which browsers show) would match it; the low bytes are read in a second decode of the
    same data that keeps them (Pillow's little-endian unpacker on big-endian samples)."""
    key = image.info.get("transparency")
    if not isinstance(key, tuple) or len(key) != 3:
        return image
    with _open(data, "PNG") as low:
        low.tile = [tile._replace(args="RGB;16L") for tile in low.tile]
        low.load()
        shown = image.convert("RGB")
        high_bytes, low_bytes = np.asarray(shown), np.asarray(low)
    keyed = np.ones(high_bytes.shape[:2], dtype=bool)
    for channel, value in enumerate(key):  # byte by byte: no 16-bit copy of the image
        keyed &= high_bytes[..., channel] == value >> 8
        keyed &= low_bytes[..., channel] == value & 0xFF
    shown.putalpha(Image.fromarray(np.where(keyed, 0, 255).astype(np.uint8)))
    return shown


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


def _upright(image: Image.Image, facts: _FileFacts) -> Image.Image:
    """A detached copy of ``image`` turned as browsers turn it (:func:`_file_facts`; the
    tensor decode path turns its pixels by the same value)."""
    method = ORIENTATION_TRANSPOSE.get(facts.orientation)
    turned = image.copy() if method is None else image.transpose(method)
    for key in _ORIENTATION_KEYS:  # consumed: nothing downstream may turn it again
        turned.info.pop(key, None)
    return turned


def _corrupt_error(fmt: str, exc: BaseException) -> CorruptImageError:
    """Build the error for data that Pillow could not parse or decode."""
    if isinstance(exc, UnidentifiedImageError):  # its message is just the BytesIO's repr
        detail = "Pillow cannot parse its header"
    else:
        detail = str(exc) or type(exc).__name__
    return CorruptImageError(f"{fmt} data is truncated or corrupt and cannot be decoded ({detail})")
