"""BMP: its size and coding, read from its headers before any decoder runs.

A BMP is one picture, stored raw or run-length coded (RLE8, RLE4). Pillow decodes the raw
ones in C, but run-length data in Python, opcode by opcode: a file of one-pixel runs costs
about a microsecond a pixel, so its run-length data is capped at :data:`MAX_RLE_BYTES` (an RLE
file bigger than that compresses worse than raw pixels would, which no encoder aims for).
"""

from __future__ import annotations

import struct
from typing import Final

from nsfwd.intake.errors import CorruptImageError, ImageComplexityError
from nsfwd.intake.limits import MIB, ImageLimits
from nsfwd.intake.pictures import Layout, Picture

MAX_RLE_BYTES: Final = 2 * MIB
"""Run-length coded pixel data that is decoded at most (a 2048x2048 RLE8 picture stored raw
is 4 MiB)."""
_RLE: Final = {1: "RLE8", 2: "RLE4"}
_FILE_HEADER: Final = 14


def read_layout(data: bytes, limits: ImageLimits) -> Layout:
    """The BMP's one picture as a :class:`~nsfwd.intake.pictures.Layout` (see the module).
    Raises :class:`CorruptImageError` for headers that do not fit the file and
    :class:`ImageComplexityError` for run-length data over :data:`MAX_RLE_BYTES`."""
    del limits
    if len(data) < _FILE_HEADER + 16:
        raise CorruptImageError(f"BMP data is truncated: {len(data)} bytes, no headers")
    pixels_at, header_size = struct.unpack_from("<II", data, 10)
    if header_size == 12:  # OS/2 1.x: 16-bit sides, no compression
        width, height = struct.unpack_from("<HH", data, 18)
        compression = 0
    elif len(data) >= _FILE_HEADER + 20 and header_size >= 40:
        width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
        height = abs(height)  # negative: stored top row first
    else:
        raise CorruptImageError(f"BMP data is corrupt: its header is {header_size} bytes long")
    if width <= 0 or pixels_at > len(data):
        raise CorruptImageError(
            f"BMP data is corrupt: width {width}, pixels at byte {pixels_at} of {len(data)}"
        )
    coding = _RLE.get(compression)
    if coding is not None and len(data) - pixels_at > MAX_RLE_BYTES:
        raise ImageComplexityError(
            f"BMP refused before decoding: its {coding} data is {len(data) - pixels_at:,} "
            f"bytes; run-length data is decoded one run at a time, and the limit is "
            f"{MAX_RLE_BYTES:,} bytes"
        )
    return Layout((Picture(0, "frame", (width, height), width * height),))
