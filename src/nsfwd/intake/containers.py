"""Container formats by content: whether an ISO base media file (MP4, MOV, HEIC, AVIF...) holds
a still image or a video, and what a Matroska file is.

ISO-BMFF is one box structure for very different things: its ``ftyp`` box's brands
(:mod:`nsfwd.intake.isobmff`, which keeps them all) tell a HEIC or AVIF picture from an MP4 or
MOV video. A file is an image when its brands name an image container; any other ``ftyp`` is a
video for the MOV/MP4 demuxer to open (cameras write many brands of their own), and so is a
QuickTime movie written without an ``ftyp`` box.
"""

from __future__ import annotations

from typing import Final, Literal

from nsfwd.intake.isobmff import read_brands

IsoBmffKind = Literal["image", "video"]

QUICKTIME_BRAND: Final = b"qt  "
QUICKTIME_FIRST_BOXES: Final = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip"})
"""Boxes a QuickTime movie written without an ``ftyp`` box may start with."""
EBML_MAGIC: Final = b"\x1a\x45\xdf\xa3"
"""The start of a Matroska (and WebM) file: an EBML header."""


def iso_bmff_kind(data: bytes) -> IsoBmffKind | None:
    """``"image"`` (HEIF, AVIF: :meth:`~nsfwd.intake.isobmff.Brands.image_container`),
    ``"video"`` (MP4, MOV and the rest), or ``None`` when ``data`` is not an ISO-BMFF file that
    says which."""
    brands = read_brands(data)
    if brands is None:
        return "video" if data[4:8] in QUICKTIME_FIRST_BOXES and _box_size_ok(data) else None
    return "image" if brands.image_container() is not None else "video"


def _box_size_ok(data: bytes) -> bool:
    """Whether a first box's size field is plausible (0: to the end, 1: a 64-bit size, 8+)."""
    size = int.from_bytes(data[:4], "big")
    return size in (0, 1) or size >= 8


def is_quicktime(data: bytes) -> bool:
    """Whether an ISO-BMFF video is a QuickTime movie (brand ``qt  ``, or no ``ftyp``)."""
    brands = read_brands(data)
    return brands is None or brands.major == QUICKTIME_BRAND


def matroska_doctype(data: bytes) -> Literal["webm", "matroska"] | None:
    """``"webm"`` or ``"matroska"`` for a file that starts with an EBML header (the DocType
    within its first 64 bytes says which; an unnamed one is Matroska), else ``None``."""
    if not data.startswith(EBML_MAGIC):
        return None
    return "webm" if b"\x42\x82\x84webm" in data[:64] else "matroska"
