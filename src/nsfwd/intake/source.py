"""An opened image file whose pictures are decoded one at a time (:class:`Source`), and the
one most formats use: Pillow's (:class:`PillowSource`: JPEG, PNG, WebP, GIF, TIFF, BMP).
HEIF and AVIF have their own (:mod:`.heif`, :mod:`.avif`).

Each picture comes out loaded, detached and upright (turned as browsers turn it,
:func:`file_facts`), its ``info`` carrying what the colour conversion needs (:mod:`.colour`).
What is per format is kept to :func:`file_facts` (a file's colour tags and orientation, as
browsers read them) and :func:`full_depth` (PNG's 16-bit colour key). Nothing here changes
Pillow's global state.
"""

from __future__ import annotations

import logging
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from io import BytesIO
from types import TracebackType
from typing import Final, Protocol

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from nsfwd.intake.colour import ColourTags
from nsfwd.intake.errors import CorruptImageError, ImageError
from nsfwd.intake.headers import png_chunk_problem, png_tags
from nsfwd.intake.limits import ImageLimits, check_dimensions
from nsfwd.intake.pictures import Layout, Picture

_log = logging.getLogger(__name__)

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
DECODE_ERRORS: Final = (
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
"""What Pillow and the codecs raise for bad data. Anything else is unexpected."""
_ANIMATED: Final = frozenset({"PNG", "WEBP"})
"""Formats whose frames Pillow counts (the others' are counted from their headers)."""


class Source(Protocol):
    """An opened file: its pictures (:attr:`layout`), each decoded by :meth:`load`."""

    format: str
    layout: Layout

    def load(self, picture: Picture) -> Image.Image | None:
        """``picture`` decoded, detached and upright, with the ``info`` colour needs; None
        for a thumbnail that does not decode (a browser shows nothing for it either). Raises
        what the decoder raises for bad data."""
        ...

    def close(self) -> None:
        """Let go of the decoder."""
        ...

    def __enter__(self) -> Source: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@dataclass(frozen=True)
class FileFacts:
    """What browsers read of a file before its pixels: its colour tags and orientation."""

    colour: ColourTags
    orientation: int
    full_depth_key: bool = False
    """A 16-bit truecolour PNG with a colour key (:func:`full_depth`)."""


def file_facts(data: bytes, image: ImageFile.ImageFile, fmt: str) -> FileFacts:
    """A just-opened file's colour tags and orientation, as browsers read them: a JPEG's ICC
    profile and EXIF (not XMP); a PNG's chunks before its image data (the first ``iCCP``, an
    ``eXIf`` there); the ICC profile alone of the others (browsers turn neither WebP, GIF nor
    BMP; Pillow turns a TIFF's pages by their own orientation tag as it loads them, as file
    viewers do, so nothing is left to turn)."""
    if fmt == "PNG":
        tags = png_tags(data)
        key = tags.depth == 16 and tags.colour_type == 2 and tags.colour_key
        return FileFacts(tags.colour, exif_orientation(tags.exif), full_depth_key=key)
    colour = ColourTags(icc_profile=image.info.get("icc_profile") or None)
    if fmt == "JPEG":
        return FileFacts(colour, exif_orientation(image.info.get("exif")))
    return FileFacts(colour, 1)


class PillowSource:
    """A file Pillow decodes. ``layout`` is completed from what Pillow reads on opening: the
    frames of a PNG or WebP, the size of every format. ``facts``: its colour tags and
    orientation (:func:`file_facts`), read before any frame loads."""

    def __init__(self, data: bytes, fmt: str, layout: Layout, limits: ImageLimits) -> None:
        self.format = fmt
        self.data = data
        self.limits = limits
        self.image = open_with_pillow(data, fmt)
        try:
            check_dimensions(self.image.size, limits)
            self.facts = file_facts(data, self.image, fmt)  # before anything loads
            self.layout = self._complete(layout)
            self.layout.check(limits)
            if fmt == "PNG" and (problem := png_chunk_problem(data)) is not None:
                raise CorruptImageError(f"PNG data is corrupt: {problem}")
            if self.facts.full_depth_key and len(self.layout.pictures) > 1:
                raise CorruptImageError(
                    "a 16-bit animated PNG with a colour key (tRNS) is not supported; save it "
                    "with an alpha channel or at 8 bits"
                )
        except BaseException:
            self.image.close()
            raise

    def _complete(self, layout: Layout) -> Layout:
        """``layout`` with Pillow's size for the image (which is checked too: for a JPEG
        with several frame headers, ours reads the first and Pillow the last) and, for PNG
        and WebP, Pillow's frames."""
        image = self.image
        size, cost = image.size, image.width * image.height
        if self.format in _ANIMATED:
            frames = getattr(image, "n_frames", 1)
            return Layout(
                tuple(Picture(i, "frame", size, cost) for i in range(frames)),
                decodes_all=True,
            )
        first = layout.pictures[0]
        if first.kind == "frame" and first.size != size and self.format != "GIF":
            rest = layout.pictures[1:]
            return Layout((Picture(0, "frame", size, cost), *rest), layout.decodes_all)
        return layout

    def load(self, picture: Picture) -> Image.Image | None:
        """See :meth:`Source.load`."""
        if picture.kind == "thumbnail":
            return self._thumbnail()
        image = self.image
        image.seek(picture.index)  # an animation decodes the frames before: each is drawn on
        image.load()
        if picture.kind == "page" and picture.index:
            check_dimensions(image.size, self.limits, what=f"page {picture.index}", smallest=False)
        shown = full_depth(image, self.data) if self.facts.full_depth_key else image
        return turned(shown, self.facts.orientation)

    def _thumbnail(self) -> Image.Image | None:
        """A JPEG's EXIF thumbnail, turned as the image is (it has no orientation of its
        own); None when it does not decode."""
        from nsfwd.intake import exif_thumbnail

        found = exif_thumbnail.find(self.data)
        if found is None:
            return None
        try:
            with open_with_pillow(self.data[found[0] : found[1]], "JPEG") as thumbnail:
                check_dimensions(thumbnail.size, self.limits, what="thumbnail", smallest=False)
                thumbnail.load()
                return turned(thumbnail, self.facts.orientation)
        except (ImageError, Image.DecompressionBombError, *DECODE_ERRORS) as exc:
            _log.debug("EXIF thumbnail not judged: %s: %s", type(exc).__name__, exc)
            return None

    def close(self) -> None:
        """See :meth:`Source.close`."""
        self.image.close()

    def __enter__(self) -> PillowSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_with_pillow(data: bytes, fmt: str) -> ImageFile.ImageFile:
    """``Image.open`` restricted to ``fmt``, with decompression-bomb warnings as exceptions."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(BytesIO(data), formats=[fmt])


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


def turned(image: Image.Image, orientation: int) -> Image.Image:
    """A detached copy of ``image`` turned by ``orientation`` (:func:`file_facts`; the tensor
    decode path turns its pixels by the same value), its orientation tags dropped: nothing
    downstream may turn it again."""
    method = ORIENTATION_TRANSPOSE.get(orientation)
    copy = image.copy() if method is None else image.transpose(method)
    for key in _ORIENTATION_KEYS:
        copy.info.pop(key, None)
    return copy


def full_depth(image: ImageFile.ImageFile, data: bytes) -> Image.Image:
    """A 16-bit truecolour PNG with a colour key, as libpng shows it: the high bytes for
    colour, transparent exactly where all three 16-bit samples equal the key. Pillow reduces
    the samples to 8 bits first, so pixels that differ from the key only in their low byte
    (which browsers show) would match it; the low bytes are read in a second decode of the
    same data that keeps them (Pillow's little-endian unpacker on big-endian samples)."""
    key = image.info.get("transparency")
    if not isinstance(key, tuple) or len(key) != 3:
        return image
    with open_with_pillow(data, "PNG") as low:
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


def upright(image: Image.Image) -> Image.Image:
    """Return a detached copy of ``image`` turned as its EXIF orientation says, as Pillow reads
    it (for decoders whose files browsers turn by EXIF: AVIF's Pillow path)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except MemoryError:
        raise
    except Exception as exc:  # hostile EXIF can make Pillow raise almost anything
        _log.debug("ignoring unusable EXIF orientation: %s: %s", type(exc).__name__, exc)
        orientation = 1
    method = ORIENTATION_TRANSPOSE.get(orientation)
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
