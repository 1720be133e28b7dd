"""Container formats by content: whether an ISO base media file (MP4, MOV, HEIC, AVIF...) holds
a still image or a video, and what a Matroska file is.

ISO-BMFF is one box structure for very different things: its ``ftyp`` box names a major brand
and compatible brands, and only those tell a HEIC or AVIF picture from an MP4 or MOV video.
The image brands are listed here, beside the video rule, so that image formats built on
ISO-BMFF and video draw the line in one place: a file is an image when its major brand is an
image brand, or when it is not a known video brand and an image brand is compatible; any other
``ftyp`` is a video for the MOV/MP4 demuxer to open (cameras write many brands of their own).
"""

from __future__ import annotations

from typing import Final, Literal

IsoBmffKind = Literal["image", "video"]

IMAGE_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
    | {b"avif", b"avis", b"miaf"}
)
"""HEIF and AVIF brands: still images and image sequences (ISO/IEC 23008-12, AV1 image
format)."""
AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
VIDEO_BRANDS: Final = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso9", b"mp41", b"mp42", b"mp71"}
    | {b"avc1", b"M4V ", b"M4VH", b"M4VP", b"qt  ", b"3gp4", b"3gp5", b"3gp6", b"3g2a"}
    | {b"dash", b"mmp4", b"MSNV", b"XAVC", b"f4v ", b"NDAS"}
)
"""Brands of MP4, QuickTime, 3GPP and camera files; a major brand here makes a video even when
an image brand is listed as compatible."""
QUICKTIME_BRAND: Final = b"qt  "
QUICKTIME_FIRST_BOXES: Final = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip"})
"""Boxes a QuickTime movie written without an ``ftyp`` box may start with."""
EBML_MAGIC: Final = b"\x1a\x45\xdf\xa3"
"""The start of a Matroska (and WebM) file: an EBML header."""


def ftyp_brands(data: bytes) -> tuple[bytes, frozenset[bytes]] | None:
    """The major brand and the compatible brands of an ISO-BMFF file's ``ftyp`` box (those
    within its first 64 bytes), or ``None`` when ``data`` does not start with one."""
    if data[4:8] != b"ftyp" or len(data) < 12:
        return None
    box_end = min(int.from_bytes(data[:4], "big"), len(data), 64)
    compatible = frozenset(data[i : i + 4] for i in range(16, box_end - 3, 4))
    return data[8:12], compatible


def iso_bmff_kind(data: bytes) -> IsoBmffKind | None:
    """``"image"`` (HEIC, AVIF: :data:`IMAGE_BRANDS`), ``"video"`` (MP4, MOV and the rest), or
    ``None`` when ``data`` is not an ISO-BMFF file that says which."""
    brands = ftyp_brands(data)
    if brands is None:
        return "video" if data[4:8] in QUICKTIME_FIRST_BOXES and _box_size_ok(data) else None
    major, compatible = brands
    if major in IMAGE_BRANDS:
        return "image"
    if major not in VIDEO_BRANDS and compatible & IMAGE_BRANDS:
        return "image"
    return "video"


def _box_size_ok(data: bytes) -> bool:
    """Whether a first box's size field is plausible (0: to the end, 1: a 64-bit size, 8+)."""
    size = int.from_bytes(data[:4], "big")
    return size in (0, 1) or size >= 8


def is_quicktime(data: bytes) -> bool:
    """Whether an ISO-BMFF video is a QuickTime movie (brand ``qt  ``, or no ``ftyp``)."""
    brands = ftyp_brands(data)
    return brands is None or brands[0] == QUICKTIME_BRAND


def matroska_doctype(data: bytes) -> Literal["webm", "matroska"] | None:
    """``"webm"`` or ``"matroska"`` for a file that starts with an EBML header (the DocType
    within its first 64 bytes says which; an unnamed one is Matroska), else ``None``."""
    if not data.startswith(EBML_MAGIC):
        return None
    return "webm" if b"\x42\x82\x84webm" in data[:64] else "matroska"
