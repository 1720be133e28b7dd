"""HEIF and AVIF containers built box by box, for the tests and the hostile corpus: several
top-level images and thumbnails in one AVIF (which no encoder here writes), and containers
that lie or overflow (10,000 items, grids of thousands of tiles, sequences of a million
frames). Single images come from the real encoders (Pillow writes AVIF, pillow-heif HEIC);
this module only rearranges their boxes."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nsfwd.intake.isobmff import BoxReader


def box(kind: bytes, *payload: bytes) -> bytes:
    """One box: its size, its type and its payload."""
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    """One full box: a box whose payload starts with a version and flags."""
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True)
class CodedImage:
    """One coded image taken from a single-image file: its type, data and properties."""

    kind: bytes
    data: bytes
    properties: tuple[bytes, ...]
    """Its property boxes, whole (``ispe``, ``av1C``/``hvcC``, ``pixi``, ``colr``...)."""


def coded_image(file: bytes) -> CodedImage:
    """The primary image of a single-image HEIF or AVIF file, with its own properties."""
    reader = BoxReader(file)
    meta = reader.find(None, b"meta")
    assert meta is not None
    iinf = reader.find(meta, b"iinf", full=True)
    iloc = reader.find(meta, b"iloc", full=True)
    iprp = reader.find(meta, b"iprp", full=True)
    assert iinf and iloc and iprp
    kind = _first_item_type(file, reader, iinf)
    offset, length = _first_extent(file, iloc.body)
    ipco = reader.find(iprp, b"ipco")
    assert ipco is not None
    properties = tuple(file[child.start : child.end] for child in reader.children(ipco))
    return CodedImage(kind, file[offset : offset + length], properties)


def container(
    brands: Sequence[bytes],
    images: Sequence[CodedImage],
    *,
    primary: int = 1,
    references: Iterable[tuple[bytes, int, Sequence[int]]] = (),
    hidden: Iterable[int] = (),
) -> bytes:
    """A HEIF file of ``images`` (items 1, 2, ...), each with its own properties, ``primary``
    named in ``pitm``, and item ``references`` (type, from, to)."""
    ftyp = box(b"ftyp", brands[0], b"\x00\x00\x00\x00", *brands)
    properties: list[bytes] = []
    associations = []
    for index, image in enumerate(images, start=1):
        first = len(properties) + 1
        properties += image.properties
        indices = range(first, first + len(image.properties))
        associations.append(struct.pack(">HB", index, len(indices)) +
                            b"".join(struct.pack(">B", 0x80 | i) for i in indices))  # fmt: skip
    hidden_ids = set(hidden)
    infe = [
        full_box(b"infe", 2, int(i in hidden_ids), struct.pack(">HH4s", i, 0, image.kind), b"\0")
        for i, image in enumerate(images, start=1)
    ]
    refs = [box(kind, struct.pack(">HH", source, len(to)), *(struct.pack(">H", t) for t in to))
            for kind, source, to in references]  # fmt: skip

    def meta(data_at: int) -> bytes:
        extents, at = [], data_at
        for i, image in enumerate(images, start=1):
            extents.append(struct.pack(">HHHII", i, 0, 1, at, len(image.data)))
            at += len(image.data)
        return full_box(
            b"meta", 0, 0,
            full_box(b"hdlr", 0, 0, b"\0" * 4, b"pict", b"\0" * 13),
            full_box(b"pitm", 0, 0, struct.pack(">H", primary)),
            full_box(b"iloc", 0, 0, b"\x44\x00", struct.pack(">H", len(images)), *extents),
            full_box(b"iinf", 0, 0, struct.pack(">H", len(images)), *infe),
            *([full_box(b"iref", 0, 0, *refs)] if refs else []),
            box(b"iprp", box(b"ipco", *properties),
                full_box(b"ipma", 0, 0, struct.pack(">I", len(images)), *associations)),
        )  # fmt: skip

    head = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(head) + box(b"mdat", *(image.data for image in images))


def _first_item_type(file: bytes, reader: BoxReader, iinf: object) -> bytes:
    for entry in reader.boxes(iinf.body + 6, iinf.end):  # type: ignore[attr-defined]
        if entry.kind == b"infe":
            kind = file[entry.body + 8 : entry.body + 12]
            if kind not in (b"Exif", b"mime"):
                return kind
    raise AssertionError("no image item")


def _first_extent(file: bytes, at: int) -> tuple[int, int]:
    """The first item's first extent, from an ``iloc`` box (version 0) Pillow or pillow-heif
    wrote: its offset and length."""
    version = file[at]
    sizes = int.from_bytes(file[at + 4 : at + 6], "big")
    offset_size, length_size, base_size = sizes >> 12, (sizes >> 8) & 0xF, (sizes >> 4) & 0xF
    assert version in (0, 1)
    pos = at + 6 + 2 + 2 + (2 if version == 1 else 0) + 2  # count, id, (method), dref
    base = int.from_bytes(file[pos : pos + base_size], "big")
    pos += base_size + 2  # extent count
    offset = int.from_bytes(file[pos : pos + offset_size], "big")
    length = int.from_bytes(file[pos + offset_size : pos + offset_size + length_size], "big")
    return base + offset, length
