"""An opened image file whose pictures are decoded one at a time (:class:`Source`), and the
one most formats use: Pillow's (:class:`PillowSource`: JPEG, PNG, WebP, GIF, TIFF, BMP).
HEIF and AVIF have their own (:mod:`.heif`, :mod:`.avif`).

Each picture comes out loaded, detached and upright (the EXIF orientation applied), its
``info`` carrying what the colour conversion needs (:mod:`.colour`). Nothing here changes
Pillow's global state.
"""

from __future__ import annotations

import logging
import struct
import threading
import warnings
import zlib
from io import BytesIO
from types import TracebackType
from typing import Final, Protocol

from PIL import ExifTags, Image, ImageFile, ImageOps

from nsfwd.intake.errors import CorruptImageError, ImageError
from nsfwd.intake.headers import png_chunk_problem
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


class PillowSource:
    """A file Pillow decodes. ``layout`` is completed from what Pillow reads on opening: the
    frames of a PNG or WebP, the size of every format."""

    def __init__(self, data: bytes, fmt: str, layout: Layout, limits: ImageLimits) -> None:
        self.format = fmt
        self.data = data
        self.limits = limits
        self.image = open_with_pillow(data, fmt)
        try:
            check_dimensions(self.image.size, limits)
            self.layout = self._complete(layout)
            self.layout.check(limits)
            if fmt == "PNG" and (problem := png_chunk_problem(data)) is not None:
                raise CorruptImageError(f"PNG data is corrupt: {problem}")
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
        return upright(image)

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
                method = ORIENTATION_TRANSPOSE.get(exif_orientation(self.image))
                return thumbnail.transpose(method) if method else thumbnail.copy()
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


def upright(image: Image.Image) -> Image.Image:
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
