"""TIFF: its pages and their sizes, read from the image file directories (IFDs) before any
decoder runs; the same reader finds the thumbnail in a JPEG's EXIF block, which is a TIFF too.

A TIFF is a chain of IFDs, one a page, each a table of tags whose values point anywhere in
the file. Pillow reads every tag of every IFD it passes in Python and, for uncompressed pages,
makes a tile of every strip; libtiff decodes a page into a buffer its tags size. So the
checks, before either reads a pixel: the chain ends (no loop) within the page limit, each IFD
has a sane number of tags, whose values lie inside the file, each page's sides are within the
limits, its strips or tiles number at most :data:`MAX_SEGMENTS`, its samples are ones a
decoder knows, and the judged pages fit the pixel budget. An LZW or Deflate bomb in a strip
is bounded by the page's size: libtiff stops filling the strip where the tags say it ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

from nsfwd.intake.errors import CorruptImageError, ImageComplexityError, ImageDimensionsError
from nsfwd.intake.limits import ImageLimits
from nsfwd.intake.pictures import Layout, Picture

MAX_ENTRIES: Final = 4096
"""Tags in one IFD (real files have a few dozen)."""
MAX_SEGMENTS: Final = 65_536
"""Strips or tiles of one page (a 2048-row page of one-row strips has 2048)."""
MAX_VALUE_BYTES_PER_BYTE: Final = 2
"""Tag values read, all IFDs together, per byte of the file (values do not overlap in real
files; Pillow reads each tag's values, so overlapping ones would multiply the work)."""
MAX_BITS_PER_PIXEL: Final = 128
"""Bits per pixel, all samples together (16-bit RGBA is 64)."""

WIDTH, LENGTH, BITS, ORIENTATION, SAMPLES = 256, 257, 258, 274, 277
STRIP_OFFSETS, TILE_OFFSETS = 273, 324
JPEG_OFFSET, JPEG_LENGTH = 513, 514
_TYPE_SIZES: Final = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4,
                      12: 8, 13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip
_UNSIGNED: Final = {1: 1, 3: 2, 4: 4, 13: 4, 16: 8, 18: 8}


@dataclass(frozen=True)
class Ifd:
    """One image file directory: its tags, read lazily from the file's bytes."""

    data: bytes
    base: int
    """Where the TIFF starts in ``data`` (offsets count from here)."""
    little: bool
    big: bool
    entries: dict[int, tuple[int, int, int]]
    """tag -> (type, count, position of its value or of the offset to it)."""

    def count(self, tag: int) -> int:
        """How many values ``tag`` has (0 when absent)."""
        entry = self.entries.get(tag)
        return entry[1] if entry else 0

    def value(self, tag: int, index: int = 0) -> int | None:
        """The ``index``-th value of an unsigned integer tag, or None when absent or not one.
        Raises :class:`CorruptImageError` for a value outside the file."""
        entry = self.entries.get(tag)
        if entry is None or entry[0] not in _UNSIGNED or index >= entry[1]:
            return None
        kind, count, at = entry
        size = _UNSIGNED[kind]
        inline = 8 if self.big else 4
        if count * size > inline:
            at = self.base + self.uint(at, inline)
            if at + count * size > len(self.data):
                raise CorruptImageError(
                    f"TIFF data is corrupt: tag {tag}'s values lie past the end of the file"
                )
        return self.uint(at + index * size, size)

    def uint(self, at: int, size: int) -> int:
        """The unsigned integer of ``size`` bytes at ``at``, in the file's byte order."""
        return int.from_bytes(self.data[at : at + size], "little" if self.little else "big")


def read_ifds(data: bytes, base: int, max_ifds: int, what: str = "pages") -> list[Ifd]:
    """The IFD chain of the TIFF at ``data[base:]``: at most ``max_ifds`` IFDs (more is an
    :class:`ImageDimensionsError` naming ``what`` they are). Raises
    :class:`CorruptImageError` for a broken header or chain (a loop included) and
    :class:`ImageComplexityError` for IFDs too wide or tags that reread the same bytes."""
    head = data[base : base + 16]
    little = head[:2] == b"II"
    if head[:2] not in (b"II", b"MM"):
        raise CorruptImageError("TIFF data is corrupt: no byte-order mark")
    order = "<" if little else ">"
    magic = struct.unpack_from(order + "H", head, 2)[0] if len(head) >= 4 else 0
    big = magic == 43
    if magic not in (42, 43) or len(head) < (16 if big else 8):
        raise CorruptImageError("TIFF data is truncated or corrupt: no valid header")
    offset = struct.unpack_from(order + ("Q" if big else "I"), head, 8 if big else 4)[0]
    ifds: list[Ifd] = []
    seen: set[int] = set()
    read = 0
    while offset:
        if offset in seen:
            raise CorruptImageError(f"TIFF data is corrupt: its IFD chain loops back to {offset}")
        seen.add(offset)
        if len(ifds) >= max_ifds:
            raise ImageDimensionsError(
                f"the file holds more than {max_ifds:,} {what}; the limit is {max_ifds:,} "
                f"(frames, pages or images per file)"
            )
        ifd, offset = _read_ifd(data, base, base + offset, little, big)
        ifds.append(ifd)
        read += _values_read(ifd)
        if read > MAX_VALUE_BYTES_PER_BYTE * len(data) + 65_536:
            raise ImageComplexityError(
                "TIFF refused before decoding: its tags point at the same bytes over and over "
                f"(their values add up to more than {MAX_VALUE_BYTES_PER_BYTE} times the file)"
            )
    return ifds


def _read_ifd(data: bytes, base: int, at: int, little: bool, big: bool) -> tuple[Ifd, int]:
    order = "<" if little else ">"
    order_name: Literal["little", "big"] = "little" if little else "big"
    count_size, entry_size = (8, 20) if big else (2, 12)
    if at + count_size > len(data):
        raise CorruptImageError("TIFF data is truncated: an IFD lies past the end of the file")
    count = struct.unpack_from(order + ("Q" if big else "H"), data, at)[0]
    if count > MAX_ENTRIES:
        raise ImageComplexityError(
            f"TIFF refused before decoding: an IFD holds {count:,} tags; the limit is "
            f"{MAX_ENTRIES:,}"
        )
    start = at + count_size
    end = start + count * entry_size
    next_size = 8 if big else 4
    if end + next_size > len(data):
        raise CorruptImageError("TIFF data is truncated: an IFD runs past the end of the file")
    entries: dict[int, tuple[int, int, int]] = {}
    layout = order + ("HHQ" if big else "HHI") + ("8x" if big else "4x")
    for index, (tag, kind, values) in enumerate(struct.iter_unpack(layout, data[start:end])):
        position = start + index * entry_size + (12 if big else 8)
        entries.setdefault(tag, (kind, values, position))
    following = int.from_bytes(data[end : end + next_size], order_name)
    return Ifd(data, base, little, big, entries), following


def _values_read(ifd: Ifd) -> int:
    """Bytes of tag values outside the IFD that Pillow reads for it (each tag's values, cut
    at the end of the file, as Pillow cuts them)."""
    inline = 8 if ifd.big else 4
    total = 0
    for kind, count, at in ifd.entries.values():
        size = _TYPE_SIZES.get(kind, 1) * count
        if size > inline:
            pointer = ifd.base + ifd.uint(at, inline)
            total += max(0, min(size, len(ifd.data) - pointer))
    return total


def read_layout(data: bytes, limits: ImageLimits) -> Layout:
    """The TIFF's pages as a :class:`~nsfwd.intake.pictures.Layout` (see the module)."""
    ifds = read_ifds(data, 0, limits.max_frames)
    pictures = []
    for index, ifd in enumerate(ifds):
        width, height = ifd.value(WIDTH), ifd.value(LENGTH)
        if width is None or height is None:
            raise CorruptImageError(f"TIFF data is corrupt: page {index} has no width or height")
        _check_samples(ifd, index)
        segments = ifd.count(TILE_OFFSETS) or ifd.count(STRIP_OFFSETS)
        if segments > MAX_SEGMENTS:
            raise ImageComplexityError(
                f"TIFF refused before decoding: page {index} is cut into {segments:,} strips or "
                f"tiles; the limit is {MAX_SEGMENTS:,}"
            )
        turned = (ifd.value(ORIENTATION) or 1) >= 5
        size = (height, width) if turned else (width, height)
        pictures.append(Picture(index, "page", size, width * height))
    return Layout(tuple(pictures))


def _check_samples(ifd: Ifd, index: int) -> None:
    samples = ifd.value(SAMPLES) or 1
    bits = sum(ifd.value(BITS, i) or 1 for i in range(min(samples, max(ifd.count(BITS), 1))))
    if ifd.count(BITS) == 1:
        bits *= samples
    if samples > 16 or bits > MAX_BITS_PER_PIXEL:
        raise CorruptImageError(
            f"TIFF page {index} has {samples} samples of {bits} bits per pixel in all; no "
            f"decoder here reads more than {MAX_BITS_PER_PIXEL} bits per pixel"
        )
