"""A JPEG's EXIF thumbnail: the small JPEG that cameras store in the EXIF block and that file
browsers show instead of decoding the photograph. Editors that change the picture and keep
the EXIF block leave the old thumbnail behind, and a thumbnail made to differ is an old
trick, so it is judged with the image.

The EXIF block (an ``APP1`` segment starting ``Exif\\0\\0``) is a small TIFF: its second IFD
describes the thumbnail, whose bytes ``JPEGInterchangeFormat`` and
``JPEGInterchangeFormatLength`` locate inside the block.
"""

from __future__ import annotations

from typing import Final

from nsfwd.intake import tiff
from nsfwd.intake.errors import ImageError

_EXIF: Final = b"Exif\x00\x00"
_APP1: Final = b"\xff\xe1"
_SOS: Final = b"\xff\xda"
_LOOKED_AT: Final = 128 * 1024
"""How far into a JPEG the EXIF segment is looked for (it comes before the first scan)."""


def find(data: bytes) -> tuple[int, int] | None:
    """Where a JPEG's EXIF thumbnail lies in ``data`` (start, end), or None when it has none
    or its EXIF block cannot say (a broken block does not make the image worse)."""
    segment = _exif_segment(data)
    if segment is None:
        return None
    start, end = segment
    block = data[:end]
    try:
        ifds = tiff.read_ifds(block, start, max_ifds=2, what="EXIF directories")
    except ImageError:
        return None
    if len(ifds) < 2:
        return None
    offset, length = ifds[1].value(tiff.JPEG_OFFSET), ifds[1].value(tiff.JPEG_LENGTH)
    if not offset or not length:
        return None
    first, last = start + offset, start + offset + length
    if last > end or data[first : first + 3] != b"\xff\xd8\xff":
        return None
    return first, last


def _exif_segment(data: bytes) -> tuple[int, int] | None:
    """The TIFF block of the first EXIF ``APP1`` segment before the first scan: where it
    starts (after ``Exif\\0\\0``) and where the segment ends."""
    pos = 2
    scan = data.find(_SOS, 2, _LOOKED_AT)
    head = data[: scan if scan >= 0 else _LOOKED_AT]
    while True:
        pos = head.find(_APP1, pos)
        if pos < 0:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if data[pos + 4 : pos + 10] == _EXIF:
            return pos + 10, min(pos + 2 + length, len(data))
        pos += 2
