"""Hostile PNGs (and a few JPEGs and WebPs) built in memory, chunk by chunk: files whose stored
pixels are not what a browser shows (issue 21). Pillow cannot write most of them (16-bit
truecolour, two colour chunks, ``cICP``, ``eXIf`` after the image data), so they are written
here by hand; :mod:`test_browser_views` shows each to Chromium to learn what it shows.

The picture in each is the same: a dark square (the "explicit" part) on a light field, so that
"the square is seen" and "the square is not seen" read off one pixel at the centre.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from io import BytesIO
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageCms

SIZE: Final = 160
"""Width and height of every file here."""
SQUARE: Final = slice(40, 120)
"""Where the square is, on both axes."""
CENTRE: Final = (80, 80)
CORNER: Final = (8, 8)


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    pixels: NDArray[np.generic],
    *,
    depth: int = 8,
    colour: int = 2,
    before: Sequence[tuple[bytes, bytes]] = (),
    after: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A PNG of ``pixels`` (height x width x channels, uint8 or uint16, as stored), of bit
    ``depth`` and ``colour`` type, with chunks ``before`` and ``after`` the image data."""
    height, width = pixels.shape[:2]
    samples = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)  # filter 0 on every row
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + b"".join(chunk(kind, data) for kind, data in before)
        + chunk(b"IDAT", zlib.compress(rows))
        + b"".join(chunk(kind, data) for kind, data in after)
        + chunk(b"IEND", b"")
    )


def square(
    field: tuple[int, ...], ink: tuple[int, ...], dtype: type = np.uint8
) -> NDArray[np.generic]:
    """A SIZE x SIZE image of ``field`` with a square of ``ink`` in the middle."""
    pixels: NDArray[np.generic] = np.empty((SIZE, SIZE, len(field)), dtype=dtype)
    pixels[:] = field
    pixels[SQUARE, SQUARE] = ink
    return pixels


# --- 16-bit truecolour with a colour key -----------------------------------------------------

KEY16: Final = (0x2020, 0x2020, 0x2020)
"""The colour key: these exact 16-bit samples are transparent."""


def low_byte_picture() -> bytes:
    """16-bit RGB whose field is the colour key (transparent) and whose square differs from it
    in the low byte only: reduced to 8 bits every pixel is the same dark grey, so a decoder
    that compares the key after reducing sees one opaque grey field; libpng and browsers show
    a dark square on the page (and nothing else)."""
    near = tuple(value + 1 for value in KEY16)
    pixels = square(KEY16, near, dtype=np.uint16)
    return png(pixels, depth=16, colour=2, before=[(b"tRNS", struct.pack(">3H", *KEY16))])


# --- colour chunks --------------------------------------------------------------------------


def _srgb_tags() -> tuple[bytes, dict[bytes, bytes]]:
    """The header and the tags (by signature) of LittleCMS's sRGB profile."""
    data = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    count = struct.unpack_from(">I", data, 128)[0]
    tags = {}
    for i in range(count):
        signature, offset, size = struct.unpack_from(">4sII", data, 132 + 12 * i)
        tags[signature] = data[offset : offset + size]
    return data[:128], tags


def icc(header: bytes, tags: dict[bytes, bytes], space: bytes | None = None) -> bytes:
    """An ICC profile: ``header`` (its size, colour space and id rewritten) and ``tags``."""
    table_end = 132 + 12 * len(tags)
    entries, body = b"", b""
    for signature, data in tags.items():
        entries += struct.pack(">4sII", signature, table_end + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    head = bytearray(header)
    struct.pack_into(">I", head, 0, table_end + len(body))
    if space is not None:
        head[16:20] = space
    head[84:100] = bytes(16)  # the profile id: zero means "not computed"
    return bytes(head) + struct.pack(">I", len(tags)) + entries + body


WHITENING_CURVE: Final = b"curv" + bytes(4) + struct.pack(">IH", 1, 1)
"""A tone curve of gamma 1/256 (u8Fixed8 0x0001): every sample but 0 comes out near full."""


def whitening_profile() -> bytes:
    """An RGB profile whose tone curves are :data:`WHITENING_CURVE`: anything but pure black
    is shown (near) white."""
    header, tags = _srgb_tags()
    return icc(header, tags | {b"rTRC": WHITENING_CURVE, b"gTRC": WHITENING_CURVE,
                               b"bTRC": WHITENING_CURVE})  # fmt: skip


def gray_profile() -> bytes:
    """A grey profile whose tone curve whitens (:data:`WHITENING_CURVE`)."""
    header, tags = _srgb_tags()
    kept = {sig: tags[sig] for sig in (b"desc", b"wtpt", b"cprt") if sig in tags}
    return icc(header, kept | {b"kTRC": WHITENING_CURVE}, space=b"GRAY")


def iccp(profile: bytes, name: bytes = b"icc") -> tuple[bytes, bytes]:
    """An iCCP chunk holding ``profile``."""
    return b"iCCP", name + b"\x00\x00" + zlib.compress(profile)


SRGB_CHUNK: Final = (b"sRGB", b"\x00")
CICP_SRGB: Final = (b"cICP", bytes([1, 13, 0, 1]))
"""cICP for sRGB: BT.709 primaries, the sRGB transfer, RGB, full range."""


def dark_square_rgb() -> NDArray[np.generic]:
    """A light field with a dark (not black) square: a whitening profile hides the square."""
    return square((235, 235, 235), (40, 40, 40))


def tagged(*chunks: tuple[bytes, bytes]) -> bytes:
    """:func:`dark_square_rgb` as an 8-bit RGB PNG with ``chunks`` before the image data."""
    return png(dark_square_rgb(), before=list(chunks))


def chrm(primaries: tuple[float, ...]) -> tuple[bytes, bytes]:
    """A cHRM chunk: white x, y, then red, green and blue x, y."""
    return b"cHRM", struct.pack(">8I", *(round(v * 100_000) for v in primaries))


SRGB_PRIMARIES: Final = (0.3127, 0.3290, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)
SWAPPED_PRIMARIES: Final = (0.3127, 0.3290, 0.15, 0.06, 0.30, 0.60, 0.64, 0.33)
"""sRGB's primaries with red and blue swapped: red samples show blue."""


def gama(gamma: float) -> tuple[bytes, bytes]:
    """A gAMA chunk."""
    return b"gAMA", struct.pack(">I", round(gamma * 100_000))


# --- orientation ----------------------------------------------------------------------------


def exif_orientation(value: int) -> bytes:
    """A little-endian TIFF block (EXIF, without the ``Exif\\0\\0`` prefix) holding only an
    orientation."""
    return b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, value, 0, 0)


def tall_picture() -> NDArray[np.uint8]:
    """A picture that tells its turns apart: a dark top half, a light bottom half."""
    pixels = np.full((SIZE, SIZE, 3), 235, dtype=np.uint8)
    pixels[: SIZE // 2] = 40
    return pixels


def png_exif(*, before_idat: bool, orientation: int = 3) -> bytes:
    """:func:`tall_picture` with an eXIf chunk (turn 180 degrees) before or after IDAT."""
    exif = (b"eXIf", exif_orientation(orientation))
    if before_idat:
        return png(tall_picture(), before=[exif])
    return png(tall_picture(), after=[exif])


def xmp_packet(orientation: int) -> bytes:
    return (
        b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="'
        + str(orientation).encode()
        + b'"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def jpeg_xmp_orientation(orientation: int = 3) -> bytes:
    """:func:`tall_picture` as a JPEG with an orientation in XMP only (no EXIF)."""
    out = BytesIO()
    Image.fromarray(tall_picture()).save(out, "JPEG", quality=95, xmp=xmp_packet(orientation))
    return out.getvalue()


def png_xmp_orientation(orientation: int = 3) -> bytes:
    """:func:`tall_picture` as a PNG with an orientation in an XMP iTXt chunk only."""
    text = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp_packet(orientation)
    return png(tall_picture(), before=[(b"iTXt", text)])


def webp_exif_orientation(orientation: int = 3) -> bytes:
    """:func:`tall_picture` as a lossless WebP with an EXIF orientation."""
    out = BytesIO()
    exif = b"Exif\x00\x00" + exif_orientation(orientation)
    Image.fromarray(tall_picture()).save(out, "WEBP", lossless=True, exif=exif)
    return out.getvalue()


def jpeg_exif_orientation(orientation: int = 3) -> bytes:
    """:func:`tall_picture` as a JPEG with an EXIF orientation (browsers follow this one)."""
    out = BytesIO()
    exif = b"Exif\x00\x00" + exif_orientation(orientation)
    Image.fromarray(tall_picture()).save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


# --- partial transparency -------------------------------------------------------------------

MIDTONE_SQUARE: Final = (128, 128, 128, 128)
"""Grey at half alpha: over white it shows 191, over black 64, over a mid-grey page 128."""


def midtones_over_grey_only() -> bytes:
    """An opaque white field with a :data:`MIDTONE_SQUARE`: only over a mid-grey page does the
    square show mid-tones (a blend neither the white page nor the black one shows)."""
    return png(square((255, 255, 255, 255), MIDTONE_SQUARE), colour=6)
