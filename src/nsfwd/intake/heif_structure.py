"""What a HEIF or AVIF container holds, read from its boxes before any decoder runs: its image
items (sizes, rotations, grids and their tiles, thumbnails, which are top-level) and its image
sequence tracks (frames, sizes, timing).

libheif and libavif parse the same boxes; reading them first lets the intake refuse a container
that would cost far more than it is worth (10,000 items, a grid of thousands of tiles, a
sequence of a million frames, a lying size) with a message naming the limit, and lets the
pixel budget count every picture before one is decoded. :func:`read_container` raises
:class:`~nsfwd.intake.isobmff.BoxError` for boxes that do not hold together and
:class:`ContainerLimitError` for one over :class:`ContainerLimits`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from nsfwd.intake.isobmff import Box, BoxError, BoxReader, Brands, read_brands

CODED_IMAGE_TYPES: Final = frozenset(
    {b"hvc1", b"av01", b"jpeg", b"unci", b"vvc1", b"avc1", b"j2k1", b"mski"}
)
"""Item types whose data is one coded picture."""
DERIVED_IMAGE_TYPES: Final = frozenset({b"grid", b"iovl", b"iden", b"tmap"})
"""Item types made from other image items (their ``dimg`` references)."""
IMAGE_TYPES: Final = CODED_IMAGE_TYPES | DERIVED_IMAGE_TYPES
PICTURE_HANDLERS: Final = frozenset({b"pict", b"vide"})
"""Track handlers of image sequences (``auxv`` tracks hold alpha or depth, not pictures)."""
_MAX_DERIVATION_DEPTH: Final = 4


class ContainerLimitError(ValueError):
    """The container holds more than :class:`ContainerLimits` allows."""


@dataclass(frozen=True)
class ContainerLimits:
    """How much structure a HEIF or AVIF container may have before it is refused unread."""

    max_items: int = 1000
    """Items of any kind (libheif's own default security limit; a 48 MP iPhone photo in 512
    pixel tiles has about 200)."""
    max_references: int = 4000
    """Item references (``dimg``, ``thmb``, ``auxl``, ...) in all."""
    max_tracks: int = 16
    """Tracks of an image sequence file (colour, alpha, depth: a handful)."""
    max_samples: int = 10_000
    """Frames of an image sequence (the intake passes its own frame limit)."""
    max_extents: int = 10_000
    """Pieces of item data in all (``iloc`` extents; an item usually has one)."""


@dataclass(frozen=True)
class Item:
    """One image item of a container."""

    id: int
    type: bytes
    hidden: bool
    stored: tuple[int, int] | None
    """Width and height as coded (``ispe``), before rotation; None when none is given."""
    quarter_turns: int = 0
    """``irot``: counter-clockwise quarter turns a viewer applies."""
    grid: tuple[int, int, int, int] | None = None
    """For a ``grid`` or ``iovl``: rows, columns (0, 0 for an overlay) and the output width
    and height its data declares."""

    @property
    def displayed(self) -> tuple[int, int] | None:
        """Width and height as shown: the grid's output or the coded size, turned."""
        size = self.grid[2:] if self.grid is not None else self.stored
        if size is None:
            return None
        return (size[1], size[0]) if self.quarter_turns % 2 else (size[0], size[1])


@dataclass(frozen=True)
class Track:
    """One image sequence track."""

    id: int
    handler: bytes
    codec: bytes
    size: tuple[int, int]
    samples: int
    durations_ms: tuple[float, ...]
    """Each sample's time on screen, in milliseconds, from ``stts`` and the track timescale."""
    auxiliary: bool = False
    """Whether it is an alpha or depth track of another (``auxl`` in its ``tref``)."""


@dataclass(frozen=True)
class Container:
    """A HEIF or AVIF container as its boxes describe it."""

    brands: Brands
    primary: int | None
    items: dict[int, Item]
    references: dict[bytes, list[tuple[int, tuple[int, ...]]]]
    """By reference type: (from item, to items) in file order."""
    tracks: tuple[Track, ...] = ()
    item_order: tuple[int, ...] = field(default=())
    """Item ids in the order of ``iinf``."""
    primary_field: tuple[int, int] | None = None
    """Where the ``pitm`` box keeps the primary item's id: its position and width in bytes."""
    sequence_box: int | None = None
    """Where the ``moov`` box starts, if there is one."""
    thumbnail_boxes: tuple[int, ...] = ()
    """Where each ``thmb`` reference box starts."""

    def top_level(self) -> list[int]:
        """The image items a viewer may show, the primary first: images that are not hidden,
        not a thumbnail or auxiliary of another, and not a tile of a derived image (libheif's
        own definition of top-level images)."""
        excluded = {
            source for kind in (b"thmb", b"auxl") for source, _ in self.references.get(kind, [])
        }
        excluded |= {
            target
            for source, targets in self.references.get(b"dimg", [])
            for target in targets
            if source in self.items
        }
        found = [
            item_id
            for item_id in self.item_order
            if item_id in self.items and not self.items[item_id].hidden and item_id not in excluded
        ]
        if self.primary in found:
            found.remove(self.primary)
            found.insert(0, self.primary)
        return found

    def thumbnails(self, of: Sequence[int]) -> list[int]:
        """The thumbnail items of the items ``of``."""
        wanted = set(of)
        return [
            source
            for source, targets in self.references.get(b"thmb", [])
            if source in self.items and wanted & set(targets)
        ]

    def sequence(self) -> Track | None:
        """The image sequence a viewer plays: the first picture track that is no one's
        alpha or depth, if any."""
        return next((t for t in self.tracks if not t.auxiliary), None)

    def tiles(self, item_id: int) -> list[int]:
        """The items a derived image is made from (its ``dimg`` references)."""
        return [
            target
            for source, targets in self.references.get(b"dimg", [])
            if source == item_id
            for target in targets
        ]

    def decode_cost(self, item_id: int, depth: int = 0) -> int:
        """Pixels decoded to show ``item_id``: its coded size, or its tiles' sum for a derived
        image. Raises :class:`BoxError` for a derivation that loops or nests too deep."""
        if depth > _MAX_DERIVATION_DEPTH:
            raise BoxError(f"item {item_id} is derived more than {_MAX_DERIVATION_DEPTH} deep")
        item = self.items.get(item_id)
        if item is None:
            raise BoxError(f"a reference names item {item_id}, which is not an image item")
        if item.type in DERIVED_IMAGE_TYPES:
            tiles = self.tiles(item_id)
            if not tiles:
                raise BoxError(f"derived image item {item_id} references no images")
            if item.type == b"grid" and item.grid is not None:
                rows, columns = item.grid[:2]
                if rows * columns != len(tiles):
                    raise BoxError(
                        f"grid item {item_id} is {rows} x {columns} tiles but references "
                        f"{len(tiles):,}"
                    )
            return sum(self.decode_cost(tile, depth + 1) for tile in tiles)
        if item.stored is None:
            raise BoxError(f"image item {item_id} has no size ('ispe' property)")
        return item.stored[0] * item.stored[1]


def read_container(data: bytes, limits: ContainerLimits = ContainerLimits()) -> Container:
    """Read the ``meta`` and ``moov`` boxes of a HEIF or AVIF file (see the module)."""
    brands = read_brands(data)
    if brands is None:
        raise BoxError("the file does not start with an 'ftyp' box")
    reader = BoxReader(data)
    meta = moov = None
    for box in reader.boxes():
        if box.kind == b"meta" and meta is None:
            meta = box
        elif box.kind == b"moov" and moov is None:
            moov = box
    if meta is None and moov is None:
        raise BoxError("it has neither a 'meta' box (images) nor a 'moov' box (a sequence)")
    container = Container(brands, None, {}, {})
    if meta is not None:
        container = _read_meta(reader, meta, brands, limits)
    if moov is not None:
        tracks = tuple(_read_tracks(reader, moov, limits))
        container = replace(container, tracks=tracks, sequence_box=moov.start)
    return container


# --- meta: items ----------------------------------------------------------------------------


@dataclass
class _Meta:
    primary: int | None = None
    primary_field: tuple[int, int] | None = None
    thumbnail_boxes: tuple[int, ...] = ()
    infos: list[tuple[int, bytes, bool]] = field(default_factory=list)
    locations: dict[int, tuple[int, list[tuple[int, int]]]] = field(default_factory=dict)
    references: dict[bytes, list[tuple[int, tuple[int, ...]]]] = field(default_factory=dict)
    properties: list[Box] = field(default_factory=list)
    associations: dict[int, list[int]] = field(default_factory=dict)
    idat: Box | None = None


def _read_meta(reader: BoxReader, meta: Box, brands: Brands, limits: ContainerLimits) -> Container:
    data = reader.data
    found = _Meta()
    for box in reader.children(meta, full=True):
        if box.kind == b"pitm":
            version, _, at = box.full(data)
            width = 2 if version == 0 else 4
            found.primary = _uint(data, at, width, box)
            found.primary_field = (at, width)
        elif box.kind == b"iinf":
            found.infos = _read_iinf(reader, box, limits)
        elif box.kind == b"iloc":
            found.locations = _read_iloc(data, box, limits)
        elif box.kind == b"iref":
            found.references, found.thumbnail_boxes = _read_iref(reader, box, limits)
        elif box.kind == b"iprp":
            for child in reader.children(box):
                if child.kind == b"ipco":
                    found.properties = list(reader.children(child))
                elif child.kind == b"ipma":
                    found.associations = _read_ipma(data, child, limits)
        elif box.kind == b"idat":
            found.idat = box
    items: dict[int, Item] = {}
    for item_id, kind, hidden in found.infos:
        if kind not in IMAGE_TYPES:
            continue
        stored, turns = _item_properties(data, found, item_id)
        grid = None
        if kind in (b"grid", b"iovl"):
            grid = _read_derived(data, found, item_id, kind)
        items[item_id] = Item(item_id, kind, hidden, stored, turns, grid)
    return Container(
        brands,
        found.primary,
        items,
        found.references,
        (),
        tuple(item_id for item_id, _, _ in found.infos),
        found.primary_field,
        thumbnail_boxes=found.thumbnail_boxes,
    )


def _read_iinf(
    reader: BoxReader, box: Box, limits: ContainerLimits
) -> list[tuple[int, bytes, bool]]:
    data = reader.data
    version, _, at = box.full(data)
    width = 2 if version == 0 else 4
    count = _uint(data, at, width, box)
    if count > limits.max_items:
        raise ContainerLimitError(f"it declares {count:,} items; the limit is {limits.max_items:,}")
    infos: list[tuple[int, bytes, bool]] = []
    for entry in reader.boxes(at + width, box.end):
        if entry.kind != b"infe":
            continue
        if len(infos) >= limits.max_items:
            raise ContainerLimitError(f"it holds more than {limits.max_items:,} items")
        entry_version, flags, pos = entry.full(data)
        if entry_version < 2:
            continue  # versions 0 and 1 describe files, not images
        id_width = 2 if entry_version == 2 else 4
        item_id = _uint(data, pos, id_width, entry)
        kind = bytes(data[pos + id_width + 2 : pos + id_width + 6])
        if pos + id_width + 6 > entry.end:
            raise BoxError(f"'infe' box at byte {entry.start} is truncated")
        infos.append((item_id, kind, bool(flags & 1)))
    return infos


def _read_iloc(
    data: bytes, box: Box, limits: ContainerLimits
) -> dict[int, tuple[int, list[tuple[int, int]]]]:
    """Each item's construction method (0: file offsets, 1: ``idat``) and extents."""
    version, _, at = box.full(data)
    if version > 2:
        raise BoxError(f"'iloc' box version {version} is unknown")
    sizes = _uint(data, at, 2, box)
    offset_size, length_size = sizes >> 12, (sizes >> 8) & 0xF
    base_size, index_size = (sizes >> 4) & 0xF, sizes & 0xF if version else 0
    at += 2
    count_width = 2 if version < 2 else 4
    count = _uint(data, at, count_width, box)
    at += count_width
    if count > limits.max_items:
        raise ContainerLimitError(f"it locates {count:,} items; the limit is {limits.max_items:,}")
    locations: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    total = 0
    for _ in range(count):
        item_id = _uint(data, at, count_width, box)
        at += count_width
        method = 0
        if version:
            method = _uint(data, at, 2, box) & 0xF
            at += 2
        at += 2  # data_reference_index
        base = _uint(data, at, base_size, box)
        at += base_size
        extent_count = _uint(data, at, 2, box)
        at += 2
        total += extent_count
        if total > limits.max_extents:
            raise ContainerLimitError(
                f"its items' data comes in more than {limits.max_extents:,} pieces"
            )
        extents = []
        for _ in range(extent_count):
            at += index_size
            offset = _uint(data, at, offset_size, box)
            length = _uint(data, at + offset_size, length_size, box)
            at += offset_size + length_size
            extents.append((base + offset, length))
        locations[item_id] = (method, extents)
    return locations


def _read_iref(
    reader: BoxReader, box: Box, limits: ContainerLimits
) -> tuple[dict[bytes, list[tuple[int, tuple[int, ...]]]], tuple[int, ...]]:
    """The references by type, and where each ``thmb`` reference box starts."""
    data = reader.data
    version, _, at = box.full(data)
    width = 2 if version == 0 else 4
    references: dict[bytes, list[tuple[int, tuple[int, ...]]]] = {}
    total = 0
    thumbnails: list[int] = []
    for ref in reader.boxes(at, box.end):
        source = _uint(data, ref.body, width, ref)
        count = _uint(data, ref.body + width, 2, ref)
        total += count
        if total > limits.max_references:
            raise ContainerLimitError(
                f"it holds more than {limits.max_references:,} item references"
            )
        start = ref.body + width + 2
        if start + count * width > ref.end:
            raise BoxError(f"{ref.kind!r} reference at byte {ref.start} is truncated")
        targets = struct.unpack_from(f">{count}{'H' if width == 2 else 'I'}", data, start)
        references.setdefault(ref.kind, []).append((source, tuple(targets)))
        if ref.kind == b"thmb":
            thumbnails.append(ref.start)
    return references, tuple(thumbnails)


def _read_ipma(data: bytes, box: Box, limits: ContainerLimits) -> dict[int, list[int]]:
    """Each item's property indices (1-based into ``ipco``)."""
    version, flags, at = box.full(data)
    count = _uint(data, at, 4, box)
    at += 4
    if count > limits.max_items:
        raise ContainerLimitError(
            f"it gives properties to {count:,} items; the limit is {limits.max_items:,}"
        )
    id_width = 2 if version < 1 else 4
    index_width = 2 if flags & 1 else 1
    index_mask = 0x7FFF if index_width == 2 else 0x7F
    found: dict[int, list[int]] = {}
    for _ in range(count):
        item_id = _uint(data, at, id_width, box)
        associations = _uint(data, at + id_width, 1, box)
        at += id_width + 1
        end = at + associations * index_width
        if end > box.end:
            raise BoxError(f"'ipma' box at byte {box.start} is truncated")
        found[item_id] = [
            _uint(data, pos, index_width, box) & index_mask for pos in range(at, end, index_width)
        ]
        at = end
    return found


def _item_properties(data: bytes, meta: _Meta, item_id: int) -> tuple[tuple[int, int] | None, int]:
    """An item's coded size (``ispe``) and its ``irot`` quarter turns."""
    stored, turns = None, 0
    for index in meta.associations.get(item_id, []):
        if not 1 <= index <= len(meta.properties):
            continue  # 0 means "no property"; libheif refuses others when it needs them
        prop = meta.properties[index - 1]
        if prop.kind == b"ispe":
            _, _, at = prop.full(data)
            if at + 8 > prop.end:
                raise BoxError(f"'ispe' property at byte {prop.start} is truncated")
            stored = struct.unpack_from(">II", data, at)
        elif prop.kind == b"irot" and prop.body < prop.end:
            turns = data[prop.body] & 3
    return stored, turns


def _read_derived(data: bytes, meta: _Meta, item_id: int, kind: bytes) -> tuple[int, int, int, int]:
    """A grid's rows, columns and output size, or an overlay's output size, from its data."""
    payload = _item_data(data, meta, item_id, 64 if kind == b"iovl" else 12)
    if len(payload) < 4:
        raise BoxError(f"{kind.decode()} item {item_id} has no header")
    large = payload[1] & 1
    width = 4 if large else 2
    if kind == b"grid":
        rows, columns, at = payload[2] + 1, payload[3] + 1, 4
    else:
        rows, columns, at = 0, 0, 2 + 4 * 2  # an overlay: four 16-bit fill values
    if len(payload) < at + 2 * width:
        raise BoxError(f"{kind.decode()} item {item_id} is truncated")
    output_width = int.from_bytes(payload[at : at + width], "big")
    output_height = int.from_bytes(payload[at + width : at + 2 * width], "big")
    return rows, columns, output_width, output_height


def _item_data(data: bytes, meta: _Meta, item_id: int, most: int) -> bytes:
    """The first ``most`` bytes of an item's data (in the file or in ``idat``)."""
    method, extents = meta.locations.get(item_id, (0, []))
    if method == 1:
        if meta.idat is None:
            raise BoxError(f"item {item_id} lies in an 'idat' box the file lacks")
        base, end = meta.idat.body, meta.idat.end
    elif method == 0:
        base, end = 0, len(data)
    else:
        raise BoxError(f"item {item_id} is built by construction method {method}")
    out = bytearray()
    for offset, length in extents:
        start = base + offset
        stop = end if length == 0 else start + length
        if start > end or stop > end:
            raise BoxError(f"item {item_id}'s data lies past the end of its box")
        out += data[start : min(stop, start + most - len(out))]
        if len(out) >= most:
            break
    return bytes(out)


# --- moov: image sequences ------------------------------------------------------------------


def _read_tracks(reader: BoxReader, moov: Box, limits: ContainerLimits) -> Iterator[Track]:
    count = 0
    for trak in reader.children(moov):
        if trak.kind != b"trak":
            continue
        count += 1
        if count > limits.max_tracks:
            raise ContainerLimitError(f"it holds more than {limits.max_tracks} tracks")
        track = _read_track(reader, trak, limits)
        if track is not None:
            yield track


def _read_track(reader: BoxReader, trak: Box, limits: ContainerLimits) -> Track | None:
    data = reader.data
    track_id, size, auxiliary = 0, (0, 0), False
    mdia = None
    for box in reader.children(trak):
        if box.kind == b"tkhd":
            version, _, at = box.full(data)
            track_id = _uint(data, at + (16 if version == 1 else 8), 4, box)
            at += (32 if version == 1 else 20) + 52
            size = (_uint(data, at, 4, box) >> 16, _uint(data, at + 4, 4, box) >> 16)
        elif box.kind == b"tref":
            auxiliary = any(ref.kind == b"auxl" for ref in reader.children(box))
        elif box.kind == b"mdia":
            mdia = box
    if mdia is None:
        raise BoxError(f"track {track_id} has no 'mdia' box")
    handler, timescale = b"", 0
    stbl = None
    for box in reader.children(mdia):
        if box.kind == b"hdlr":
            _, _, at = box.full(data)
            handler = bytes(data[at + 4 : at + 8])
        elif box.kind == b"mdhd":
            version, _, at = box.full(data)
            timescale = _uint(data, at + (16 if version == 1 else 8), 4, box)
        elif box.kind == b"minf":
            stbl = reader.find(box, b"stbl")
    if handler not in PICTURE_HANDLERS:
        return None
    if stbl is None:
        raise BoxError(f"track {track_id} has no sample table")
    codec, coded, samples, deltas = _read_samples(reader, stbl, limits)
    size = (max(size[0], coded[0]), max(size[1], coded[1]))
    durations = _durations(deltas, samples, timescale)
    return Track(track_id, handler, codec, size, samples, durations, auxiliary)


def _read_samples(
    reader: BoxReader, stbl: Box, limits: ContainerLimits
) -> tuple[bytes, tuple[int, int], int, list[tuple[int, int]]]:
    """A sample table's codec, the size its sample entry gives, its sample count and its
    (count, duration) runs."""
    data = reader.data
    codec, coded, samples = b"", (0, 0), 0
    deltas: list[tuple[int, int]] = []
    for box in reader.children(stbl):
        if box.kind == b"stsd":
            _, _, at = box.full(data)
            entry = next(reader.boxes(at + 4, box.end), None)
            if entry is not None:
                codec = entry.kind
                if entry.body + 28 <= entry.end:  # a visual sample entry's own size
                    coded = struct.unpack_from(">HH", data, entry.body + 24)
        elif box.kind == b"stsz":
            _, _, at = box.full(data)
            samples = _uint(data, at + 4, 4, box)
            if samples > limits.max_samples:
                raise ContainerLimitError(
                    f"its image sequence has {samples:,} frames; the limit is "
                    f"{limits.max_samples:,}"
                )
        elif box.kind == b"stts":
            _, _, at = box.full(data)
            entries = _uint(data, at, 4, box)
            if at + 4 + 8 * entries > box.end:
                raise BoxError(f"'stts' box at byte {box.start} is truncated")
            flat = struct.unpack_from(f">{2 * entries}I", data, at + 4)
            deltas = list(zip(flat[::2], flat[1::2], strict=True))
    return codec, coded, samples, deltas


def _durations(deltas: list[tuple[int, int]], samples: int, timescale: int) -> tuple[float, ...]:
    """Each sample's duration in milliseconds, for at most ``samples`` samples."""
    if timescale <= 0:
        return ()
    out: list[float] = []
    for count, delta in deltas:
        take = min(count, samples - len(out))
        out.extend([1000.0 * delta / timescale] * take)
        if len(out) >= samples:
            break
    return tuple(out)


def _uint(data: bytes, at: int, width: int, box: Box) -> int:
    """An unsigned big-endian integer of ``width`` bytes (0 for width 0) inside ``box``."""
    if at + width > box.end:
        raise BoxError(f"{box.kind.decode('latin-1')!r} box at byte {box.start} is truncated")
    return int.from_bytes(data[at : at + width], "big")
