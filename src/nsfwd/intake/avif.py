"""AVIF: still images, grids and image sequences, decoded by Pillow's own AVIF plugin
(libavif), after the container's structure has been read and bounded (:mod:`.heif_structure`,
the same as HEIF's).

libavif shows one thing of a file: its image sequence when it has one, else its primary item.
A viewer may see more: a program that does not animate shows the still image an animated
AVIF carries beside its sequence, and any top-level image or thumbnail may be shown. So each
of those is decoded from a copy of the file in which the ``pitm`` box names it as the primary
item (the ``moov`` box, renamed ``free``, no longer offers a sequence, and ``thmb``
references, which libavif will not show as primary, are renamed): a few bytes changed, the
same decoder. Turning (``irot``, ``imir``) is libavif's, handed to Pillow as the
EXIF orientation, which :func:`~nsfwd.intake.source.upright` applies.
"""

from __future__ import annotations

from types import TracebackType
from typing import Final

from PIL import Image, ImageFile

from nsfwd.intake import heif
from nsfwd.intake.errors import CorruptImageError
from nsfwd.intake.heif_structure import Container
from nsfwd.intake.limits import ImageLimits, check_dimensions
from nsfwd.intake.pictures import Layout, Picture
from nsfwd.intake.source import open_with_pillow, upright

_STILL_BRANDS: Final = {b"avis": b"avif", b"msf1": b"mif1", b"avio": b"avif"}
"""Sequence brands, and the still-image brands that replace them where the sequence is hidden."""
_FORGOTTEN_REFERENCE: Final = b"none"
"""A reference type no decoder knows, which a ``thmb`` reference becomes."""


def read_layout(data: bytes, limits: ImageLimits) -> Layout:
    """The pictures of an AVIF file (see :func:`nsfwd.intake.heif.read`)."""
    return heif.read(data, "AVIF", limits)[1]


class AvifSource:
    """An AVIF file: its sequence's frames through Pillow, then each top-level image and
    thumbnail from a copy that names it primary (see the module)."""

    format = "AVIF"

    def __init__(self, data: bytes, limits: ImageLimits) -> None:
        container, layout, items = heif.read(data, "AVIF", limits)
        layout.check(limits)
        self.data = data
        self.container = container
        self.layout = layout
        self.items = items
        self.limits = limits
        self.image: ImageFile.ImageFile | None = None
        frames = sum(1 for item in items if item is None)
        if frames:
            self.image = open_with_pillow(data, "AVIF")
            found = getattr(self.image, "n_frames", 1)
            if found != frames:
                self.image.close()
                raise CorruptImageError(
                    f"AVIF data is corrupt: its sequence declares {frames} frames and the "
                    f"decoder finds {found}"
                )

    def load(self, picture: Picture) -> Image.Image | None:
        """See :meth:`nsfwd.intake.source.Source.load`."""
        item = self.items[picture.index]
        if item is None:
            assert self.image is not None
            self.image.seek(picture.index)
            self.image.load()
            return upright(self.image)
        with open_with_pillow(self._showing(item), "AVIF") as image:
            first = picture.index == 0
            what = "image" if first else f"{picture.kind} {picture.index}"
            check_dimensions(image.size, self.limits, what=what, smallest=first)
            image.load()
            return upright(image)

    def _showing(self, item: int) -> bytes:
        """The file as libavif would show ``item``: named primary, with no sequence."""
        container: Container = self.container
        if item == container.primary and container.sequence_box is None:
            return self.data
        copy = bytearray(self.data)
        if container.sequence_box is not None:
            copy[container.sequence_box + 4 : container.sequence_box + 8] = b"free"
            ftyp_end = min(int.from_bytes(copy[:4], "big"), len(copy))
            for at in range(8, ftyp_end - 3, 4):  # a sequence brand promises a 'moov'
                brand = bytes(copy[at : at + 4])
                copy[at : at + 4] = _STILL_BRANDS.get(brand, brand)
        if item != container.primary:
            if container.primary_field is None:
                raise CorruptImageError(f"AVIF data is corrupt: no 'pitm' box to show item {item}")
            at, width = container.primary_field
            if item >= 1 << (8 * width):
                raise CorruptImageError(f"AVIF data is corrupt: item {item} cannot be primary")
            copy[at : at + width] = item.to_bytes(width, "big")
            for start in container.thumbnail_boxes:  # libavif will not show a thumbnail
                copy[start + 4 : start + 8] = _FORGOTTEN_REFERENCE
        return bytes(copy)

    def close(self) -> None:
        """Let libavif go."""
        if self.image is not None:
            self.image.close()

    def __enter__(self) -> AvifSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
