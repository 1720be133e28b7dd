"""HEIF (HEIC, the photographs phones take): every top-level image of the container and every
thumbnail, decoded through libheif (the ``pillow-heif`` binding), after the container's
structure has been read and bounded (:mod:`.heif_structure`).

A HEIF file holds items: coded pictures, grids made of them (a 12 MP iPhone photograph is 48
tiles of 512x512), thumbnails, alpha and depth planes, metadata. A viewer may show any
top-level image (a burst, a stereo pair, or a second picture hidden behind a benign primary
one), and file browsers show the thumbnail. libheif turns each image upright itself (``irot``
and ``imir``, which HEIF makes authoritative over the EXIF orientation); its ICC profile
travels in the picture's ``info`` for :mod:`.colour`. HEIF image sequences (animated HEIF,
HEVC in a ``moov`` track), which libheif's binding does not decode, are played by FFmpeg
(:mod:`.sequence`); without PyAV such a file is refused rather than judged on its still
images alone, which would let the animation pass unseen.

:func:`container_layout` is shared with :mod:`.avif`, whose container has the same structure.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from PIL import Image

from nsfwd.intake.errors import (
    CorruptImageError,
    ImageComplexityError,
    ImageError,
    UnsupportedFormatError,
)
from nsfwd.intake.heif_structure import (
    Container,
    ContainerLimitError,
    ContainerLimits,
    read_container,
)
from nsfwd.intake.isobmff import BoxError
from nsfwd.intake.limits import ImageLimits, check_dimensions
from nsfwd.intake.pictures import Layout, Picture
from nsfwd.intake.sequence import SequenceFrames

if TYPE_CHECKING:
    from pillow_heif import HeifFile, HeifImage

_log = logging.getLogger(__name__)

INSTALL_HINT: Final = "pip install pillow-heif"
_LIBHEIF_ERRORS: Final = (ValueError, RuntimeError, EOFError, SyntaxError, OSError, KeyError)
"""What pillow-heif raises for data libheif refuses."""


def read(data: bytes, fmt: str, limits: ImageLimits) -> tuple[Container, Layout, list[int | None]]:
    """The container of a HEIF or AVIF file, its pictures, and for each picture the item it
    shows (None for a frame of the image sequence). Raises :class:`CorruptImageError` for
    boxes that do not hold together, :class:`ImageComplexityError` for a container over
    :class:`~nsfwd.intake.heif_structure.ContainerLimits`; the caller checks the layout."""
    try:
        container = read_container(data, ContainerLimits(max_samples=limits.max_frames))
        layout, items = container_layout(container)
    except ContainerLimitError as exc:
        raise ImageComplexityError(f"{fmt} refused before decoding: {exc}") from exc
    except BoxError as exc:
        raise CorruptImageError(f"{fmt} data is truncated or corrupt: {exc}") from exc
    return container, layout, items


def read_layout(data: bytes, limits: ImageLimits) -> Layout:
    """The pictures of a HEIF file (see :func:`read`)."""
    return read(data, "HEIF", limits)[1]


def container_layout(container: Container) -> tuple[Layout, list[int | None]]:
    """The pictures of a container: the frames of its image sequence, then its top-level
    images (the primary first), then their thumbnails; and the item each shows (None for a
    sequence frame). Raises :class:`BoxError` for a container with nothing to show or with
    images whose size or derivation cannot be read."""
    pictures: list[Picture] = []
    items: list[int | None] = []
    track = container.sequence()
    if track is not None:
        area = track.size[0] * track.size[1]
        for index in range(track.samples):
            duration = track.durations_ms[index] if index < len(track.durations_ms) else None
            pictures.append(Picture(index, "frame", track.size, area, duration))
            items.append(None)
    if container.items and container.primary not in container.items:
        raise BoxError(f"its primary item ({container.primary}) is not an image")
    top = container.top_level()
    thumbnails = [thumb for image in top for thumb in container.thumbnails([image])]
    for kind, found in (("image", top), ("thumbnail", thumbnails)):
        for item_id in found:
            cost = container.decode_cost(item_id)
            shown = container.items[item_id].displayed
            pictures.append(Picture(len(pictures), kind, shown, cost))  # type: ignore[arg-type]
            items.append(item_id)
    if not pictures:
        raise BoxError("it holds no image and no image sequence")
    return Layout(tuple(pictures), decodes_all=track is not None), items


class HeifSource:
    """A HEIF file: the frames of its image sequence through FFmpeg (:mod:`.sequence`), its
    top-level images (the primary first) and their thumbnails through libheif, in the order
    of :func:`container_layout`."""

    format = "HEIF"

    def __init__(self, data: bytes, limits: ImageLimits) -> None:
        _, layout, items = read(data, "HEIF", limits)
        layout.check(limits)
        self.layout = layout
        self.limits = limits
        self.frames = items.count(None)
        self.sequence = SequenceFrames(data, "HEIF") if self.frames else None
        self.pictures: list[tuple[HeifImage, int | None]] = []
        if len(items) > self.frames:
            self._open_images(data)

    def _open_images(self, data: bytes) -> None:
        """libheif's view of the top-level images and their thumbnails, which must be the
        pictures the structure shows."""
        file = _open_heif(data)
        images = list(file)
        images.insert(0, images.pop(file.primary_index))
        self.pictures = [(image, None) for image in images]
        for image in images:
            thumbnails: Any = image.info.get("thumbnails") or []
            self.pictures += [(image, index) for index in range(len(thumbnails))]
        expected = len(self.layout.pictures) - self.frames
        if len(self.pictures) != expected:
            raise CorruptImageError(
                f"HEIF data is corrupt: its structure shows {expected} images and thumbnails "
                f"and libheif finds {len(self.pictures)}"
            )

    def load(self, picture: Picture) -> Image.Image | None:
        """The picture decoded by libheif, upright; None for a thumbnail that does not
        decode. Raises :class:`CorruptImageError` for an image that does not."""
        if picture.index < self.frames:
            assert self.sequence is not None
            return self.sequence.frame(picture.index)
        image, thumbnail = self.pictures[picture.index - self.frames]
        first = picture.index == 0
        try:
            shown: Any = image if thumbnail is None else image.get_thumbnail(thumbnail)
            what = "image" if first else f"{picture.kind} {picture.index}"
            check_dimensions(tuple(shown.size), self.limits, what=what, smallest=first)
            decoded: Image.Image = shown.to_pillow()
        except ImageError:
            if thumbnail is None:
                raise
            return None
        except _LIBHEIF_ERRORS as exc:
            if thumbnail is not None:
                _log.debug("HEIF thumbnail not judged: %s: %s", type(exc).__name__, exc)
                return None
            raise CorruptImageError(f"HEIF data cannot be decoded ({exc})") from exc
        decoded.info.pop("exif", None)  # its orientation is applied already (irot, imir)
        return decoded

    def close(self) -> None:
        """Let libheif (and FFmpeg) go."""
        self.pictures = []
        if self.sequence is not None:
            self.sequence.close()

    def __enter__(self) -> HeifSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _open_heif(data: bytes) -> HeifFile:
    """libheif's view of the file (its structure only: pictures are decoded on demand)."""
    try:
        import pillow_heif
    except ImportError as exc:
        raise UnsupportedFormatError(
            f"HEIC/HEIF images need pillow-heif, which this server lacks ({INSTALL_HINT})"
        ) from exc
    try:
        return pillow_heif.open_heif(data, convert_hdr_to_8bit=True)
    except _LIBHEIF_ERRORS as exc:
        raise CorruptImageError(f"HEIF data is truncated or corrupt ({exc})") from exc
