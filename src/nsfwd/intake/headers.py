"""What a file's header says before any decoder is involved: its pictures and their sizes
(:func:`read_layout`), read by small parsers of our own (Pillow's WebP plugin builds its
decoder, canvas and all, inside ``Image.open``; the newer formats' parsers have modules of their
own); a JPEG's marker structure; a PNG's chunks, their CRCs, and the tags browsers read from
them."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from nsfwd.intake import bmp, exif_thumbnail, gif, jpeg_structure, tiff
from nsfwd.intake.colour import MAX_ICC_BYTES, Chromaticity, ColourTags
from nsfwd.intake.errors import ImageComplexityError
from nsfwd.intake.limits import ImageLimits
from nsfwd.intake.pictures import Layout, Picture
from nsfwd.intake.sniff import PNG_MAGIC, printable

# JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC, which share the range).
_JPEG_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


_LAYOUTS: Final = {
    "GIF": gif.read_layout,
    "TIFF": tiff.read_layout,
    "BMP": bmp.read_layout,
}


def read_layout(data: bytes, fmt: str, limits: ImageLimits) -> Layout:
    """The pictures of ``data`` in format ``fmt`` as far as its header says, before any
    decoder runs: for GIF, TIFF and BMP every picture (:mod:`.gif`, :mod:`.tiff`,
    :mod:`.bmp`); for JPEG the image and its EXIF thumbnail; for PNG and WebP the image
    alone (Pillow counts their frames, without decoding). HEIF and AVIF have their own
    (:mod:`.heif`). Raises the format's :class:`~nsfwd.intake.errors.ImageError` for a
    structure it refuses; the caller checks the layout against the limits."""
    reader = _LAYOUTS.get(fmt)
    if reader is not None:
        return reader(data, limits)
    size = header_size(data, fmt)
    area = size[0] * size[1] if size else 0
    pictures = [Picture(0, "frame", size, area)]
    if fmt == "JPEG" and (found := exif_thumbnail.find(data)) is not None:
        thumbnail = _jpeg_size(data[found[0] : found[1]])
        cost = thumbnail[0] * thumbnail[1] if thumbnail else 0
        pictures.append(Picture(1, "thumbnail", thumbnail, cost))
    return Layout(tuple(pictures))


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Read (width, height) from the file header without Pillow, or ``None`` if not found.

    This is an early guard only: Pillow's WebP plugin builds its decoder, which sizes the
    canvas, inside ``Image.open``. The size Pillow reports is checked again afterwards.
    """
    if fmt == "PNG":
        if data[12:16] == b"IHDR" and len(data) >= 24:
            width, height = struct.unpack_from(">II", data, 16)
            return width, height
        return None
    if fmt == "WEBP":
        return _webp_size(data)
    return _jpeg_size(data)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Read the canvas size of a WebP file from its first chunk (VP8X, VP8L or VP8)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Find the first start-of-frame marker of a JPEG and return its (width, height).

    Bytes between segments that are not a marker are skipped, as libjpeg and Pillow skip them.
    """
    pos = 2  # after SOI
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return None
        marker = data[pos + 1]
        if marker in (0x00, 0xFF):  # a stuffed zero (garbage here) or a fill byte
            pos += 1
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
        elif marker in _JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def png_chunk_problem(data: bytes) -> str | None:
    """Walk the chunks of a PNG; say what is wrong (bad CRC, truncation, no IEND) or ``None``."""
    view = memoryview(data)
    pos = len(PNG_MAGIC)
    while True:
        if pos + 8 > len(data):
            return f"the file ends at byte {len(data)} without an IEND chunk (truncated)"
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length + 4
        if end > len(data):
            return (
                f"chunk {printable(kind)!r} at byte {pos} runs past the end of the file (truncated)"
            )
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"chunk {printable(kind)!r} at byte {pos} has a bad CRC"
        if kind == b"IEND":
            return None
        pos = end


def check_jpeg_structure(data: bytes) -> None:
    """Refuse a JPEG whose structure predicts far more decoding work than its size suggests
    (:mod:`nsfwd.intake.jpeg_structure`: too many scans or segments, long runs of fill bytes)."""
    excess = jpeg_structure.read_structure(data).excess
    if excess is not None:
        raise ImageComplexityError(f"JPEG refused before decoding: {excess}")


@dataclass(frozen=True)
class PngTags:
    """What a PNG's chunks before its image data say, as browsers read them (Pillow keeps the
    last ``iCCP`` and reads chunks after the image data too)."""

    depth: int
    colour_type: int
    colour: ColourTags
    exif: bytes | None
    """The first ``eXIf`` chunk's TIFF block; one after the image data is not shown."""
    colour_key: bool
    """Whether it has a ``tRNS`` chunk."""


def png_tags(data: bytes) -> PngTags:
    """The tags of the chunks before the first ``IDAT`` (see :class:`PngTags`). A chunk too
    short for its kind is skipped, as browsers skip it."""
    depth, colour_type = (data[24], data[25]) if len(data) >= 26 else (0, 0)
    found: dict[bytes, bytes] = {}
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind in (b"IDAT", b"IEND") or pos + 12 + length > len(data):
            break
        found.setdefault(kind, data[pos + 8 : pos + 8 + length])  # the first of each kind
        pos += 12 + length
    return PngTags(
        depth,
        colour_type,
        ColourTags(
            icc_profile=_iccp_profile(found.get(b"iCCP")),
            srgb=len(found.get(b"sRGB", b"")) >= 1,
            gamma=_fixed(found.get(b"gAMA"), 1)[0] if len(found.get(b"gAMA", b"")) >= 4 else None,
            chromaticity=_chromaticity(found.get(b"cHRM")),
            cicp=_cicp(found.get(b"cICP")),
        ),
        exif=found.get(b"eXIf") or None,
        colour_key=b"tRNS" in found,
    )


def _iccp_profile(chunk: bytes | None) -> bytes | None:
    """The profile an iCCP chunk holds, inflated to at most one byte past the size limit (so
    that an oversized one is still refused by it); ``None`` when it does not inflate."""
    if chunk is None:
        return None
    name_end = chunk.find(b"\0")
    if name_end < 0 or name_end + 2 > len(chunk) or chunk[name_end + 1] != 0:
        return None
    inflater = zlib.decompressobj()
    try:
        return inflater.decompress(chunk[name_end + 2 :], MAX_ICC_BYTES + 1) or None
    except zlib.error:
        return None


def _fixed(chunk: bytes | None, count: int) -> tuple[float, ...]:
    """``count`` unsigned PNG numbers scaled by 100,000."""
    assert chunk is not None
    return tuple(value / 100_000 for value in struct.unpack_from(f">{count}I", chunk))


def _cicp(chunk: bytes | None) -> tuple[int, int, int, int] | None:
    if chunk is None or len(chunk) < 4:
        return None
    return chunk[0], chunk[1], chunk[2], chunk[3]


def _chromaticity(chunk: bytes | None) -> Chromaticity | None:
    if chunk is None or len(chunk) < 32:
        return None
    return _fixed(chunk, 8)  # type: ignore[return-value]
