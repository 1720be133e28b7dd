"""The ISO base media file format (ISO/IEC 14496-12), which HEIF, AVIF, MP4 and MOV share: its
boxes, read within bounds, and the ``ftyp`` brands that say which of them a file is.

The brands are kept here, in one place, image brands apart from video brands: a file is an
image container (HEIF or AVIF) when its ``ftyp`` names an image brand, a video when it names
only video brands. Nothing here decodes; :mod:`.heif_structure` reads an image container's
items and tracks from these boxes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
    | {b"mif2", b"miaf"}
)
"""Brands of HEIF files: HEVC-coded images and sequences (``heic``, ``hevc``...) and the
generic image and sequence structural brands (``mif1``, ``msf1``, ``mif2``, ``miaf``)."""
HEIF_CODING_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
)
"""The HEIF brands that name HEVC coding (the rest are structural, shared with AVIF)."""
AVIF_BRANDS: Final = frozenset({b"avif", b"avis", b"avio"})
"""Brands of AVIF files: AV1-coded images (``avif``), sequences (``avis``, ``avio``)."""
VIDEO_BRANDS: Final = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9"}
    | {b"mp41", b"mp42", b"mp71", b"avc1", b"M4V ", b"M4VH", b"M4VP", b"qt  ", b"dash"}
    | {b"3gp4", b"3gp5", b"3gp6", b"3gp7", b"3g2a", b"3g2b", b"f4v ", b"mmp4", b"MSNV"}
    | {b"XAVC", b"NDAS", b"av01", b"cmfc", b"cmf2"}
)
"""Brands of video files (MP4, MOV, 3GP, ...). ``iso*`` brands also appear in image files
beside an image brand; an image brand decides."""

ImageContainer = Literal["HEIF", "AVIF"]
BRAND_BYTES: Final = 4
MAX_BOXES: Final = 100_000
"""Boxes read from one file at most, whatever their nesting: a 10 MB file of empty 8-byte
boxes would otherwise be over a million of them."""


class BoxError(ValueError):
    """The boxes do not nest or do not fit in the file (a corrupt or lying container)."""


@dataclass(frozen=True)
class Brands:
    """The brands of a file's ``ftyp`` box."""

    major: bytes
    compatible: frozenset[bytes]

    @property
    def all(self) -> frozenset[bytes]:
        """The major brand and the compatible ones."""
        return self.compatible | {self.major}

    def image_container(self) -> ImageContainer | None:
        """``"AVIF"`` or ``"HEIF"`` when the brands name an image container, else None.

        AVIF when the major brand is AVIF's, or an AVIF brand is listed and no HEVC one (AVIF
        files often list the structural ``mif1``/``miaf`` too); HEIF for any other HEIF brand.
        """
        if self.major in AVIF_BRANDS:
            return "AVIF"
        if self.all & AVIF_BRANDS and not self.all & HEIF_CODING_BRANDS:
            return "AVIF"
        if self.all & HEIF_BRANDS:
            return "HEIF"
        return None

    def is_video(self) -> bool:
        """Whether the brands name a video container and no image one."""
        return self.image_container() is None and bool(self.all & VIDEO_BRANDS)


def read_brands(data: bytes) -> Brands | None:
    """The brands of the ``ftyp`` box ``data`` starts with, or None when it starts with none."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    end = min(int.from_bytes(data[:4], "big"), len(data))
    compatible = {
        data[at : at + BRAND_BYTES] for at in range(16, end - BRAND_BYTES + 1, BRAND_BYTES)
    }
    return Brands(data[8:12], frozenset(compatible))


@dataclass(frozen=True)
class Box:
    """One box: its type, where its payload starts and where it ends (``data[body:end]``)."""

    kind: bytes
    start: int
    body: int
    end: int

    def full(self, data: bytes) -> tuple[int, int, int]:
        """A full box's version, flags, and where the rest of its payload starts."""
        if self.body + 4 > self.end:
            raise BoxError(f"{_name(self.kind)} box at byte {self.start} is too short")
        word = int.from_bytes(data[self.body : self.body + 4], "big")
        return word >> 24, word & 0xFFFFFF, self.body + 4


class BoxReader:
    """Reads boxes from one file's bytes, counting them against :data:`MAX_BOXES`."""

    def __init__(self, data: bytes, max_boxes: int = MAX_BOXES) -> None:
        self.data = data
        self.max_boxes = max_boxes
        self.read = 0

    def boxes(self, start: int = 0, end: int | None = None) -> Iterator[Box]:
        """The boxes between ``start`` and ``end`` (the file's end by default), in order.

        Raises :class:`BoxError` for a box that runs past its parent, is shorter than its own
        header, or is one too many.
        """
        data = self.data
        end = len(data) if end is None else end
        pos = start
        while pos < end:
            if pos + 8 > end:
                raise BoxError(f"{end - pos} stray bytes at byte {pos}, too few for a box")
            self.read += 1
            if self.read > self.max_boxes:
                raise BoxError(f"more than {self.max_boxes:,} boxes")
            size, kind = struct.unpack_from(">I4s", data, pos)
            body = pos + 8
            if size == 1:
                if pos + 16 > end:
                    raise BoxError(f"{_name(kind)} box at byte {pos} is truncated")
                size = int.from_bytes(data[pos + 8 : pos + 16], "big")
                body += 8
            elif size == 0:
                size = end - pos  # to the end of the file (or of its parent)
            if kind == b"uuid":
                body += 16
            if size < body - pos or pos + size > end:
                raise BoxError(
                    f"{_name(kind)} box at byte {pos} claims {size:,} bytes; {end - pos:,} are left"
                )
            yield Box(kind, pos, body, pos + size)
            pos += size

    def children(self, box: Box, *, full: bool = False) -> Iterator[Box]:
        """The boxes inside ``box`` (after its version and flags when it is a full box)."""
        start = box.full(self.data)[2] if full else box.body
        return self.boxes(start, box.end)

    def find(self, box: Box | None, kind: bytes, *, full: bool = False) -> Box | None:
        """The first box of ``kind`` inside ``box`` (or at the top level for None)."""
        found = self.children(box, full=full) if box is not None else self.boxes()
        return next((child for child in found if child.kind == kind), None)


def _name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))
