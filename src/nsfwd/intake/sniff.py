"""What the bytes are, from their content, never from a name or a client's content type; and
for what is refused, a few words on what it looks like instead."""

from __future__ import annotations

from typing import Final

from nsfwd.intake.containers import is_quicktime, matroska_doctype
from nsfwd.intake.errors import CorruptImageError, UnsupportedFormatError
from nsfwd.intake.isobmff import read_brands

SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF", "TIFF", "BMP")
"""Format names that intake accepts, as :func:`sniff_format` returns them (Pillow's names;
``HEIF`` covers HEIC)."""
ACCEPTED: Final = "JPEG, PNG, WebP, GIF, HEIC/HEIF, AVIF, TIFF and BMP"
"""The accepted formats, as refusals list them."""
MEDIA_TYPES: Final = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
}
"""Each accepted format's media type (HEIF files from phones are HEIC)."""
EXTENSIONS: Final = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "HEIF": "heic",
    "AVIF": "avif",
    "TIFF": "tiff",
    "BMP": "bmp",
}
"""Each accepted format's usual file extension."""

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
GIF_MAGICS: Final = (b"GIF87a", b"GIF89a")
TIFF_MAGICS: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""Classic TIFF and BigTIFF, in either byte order."""
BMP_MAGIC: Final = b"BM"
_BMP_HEADER_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})
"""The sizes a BMP's second header has (two bytes of magic alone are common in text)."""


def sniff_format(data: bytes) -> str | None:
    """Return the format of ``data`` (one of :data:`SUPPORTED_FORMATS`) from its magic bytes,
    or for HEIF and AVIF from the brands of its ``ftyp`` box; else ``None``.

    Only the signature is checked; whether the rest is valid is for decoding to say.
    """
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(GIF_MAGICS):
        return "GIF"
    if data.startswith(TIFF_MAGICS):
        return "TIFF"
    if data.startswith(BMP_MAGIC) and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    brands = read_brands(data)
    if brands is not None:
        return brands.image_container()
    return None


def require_supported_format(data: bytes) -> str:
    """Return the sniffed format of ``data`` or raise saying what it is instead."""
    fmt = sniff_format(data)
    if fmt is not None:
        return fmt
    start_of = _truncated_signature(data)
    if start_of is not None:
        raise CorruptImageError(
            f"input is only {len(data)} bytes: the start of a {start_of} file, truncated"
        )
    if not data:
        raise UnsupportedFormatError(f"the input is empty (0 bytes); expected one of {ACCEPTED}")
    raise UnsupportedFormatError(
        f"unsupported image format: {_describe(data)}; accepted formats are {ACCEPTED}"
    )


def _truncated_signature(data: bytes) -> str | None:
    """Name the supported format whose signature ``data`` is a strict beginning of, if any."""
    if len(data) < 2:
        return None
    if len(data) < len(PNG_MAGIC) and PNG_MAGIC.startswith(data):
        return "PNG"
    if len(data) < len(JPEG_MAGIC) and JPEG_MAGIC.startswith(data):
        return "JPEG"
    if len(data) < 12 and data.startswith(b"RIFF"):
        return "RIFF (WebP?)"
    if any(len(data) < len(magic) and magic.startswith(data) for magic in GIF_MAGICS):
        return "GIF"
    if len(data) < 4 and any(magic.startswith(data) for magic in TIFF_MAGICS):
        return "TIFF"
    return None


_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\x00\x00\x01\x00", "ICO (Windows icon)"),
    (b"8BPS", "Photoshop PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"PK\x03\x04", "a ZIP archive (or DOCX/XLSX/...)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"data:", "a data: URI (text); send the decoded bytes instead"),
    (b"iVBORw0KGgo", "base64-encoded PNG (text); send the decoded bytes instead"),
    (b"/9j/", "base64-encoded JPEG (text); send the decoded bytes instead"),
    (b"UklGR", "base64-encoded RIFF/WebP (text); send the decoded bytes instead"),
    (b"R0lGOD", "base64-encoded GIF (text); send the decoded bytes instead"),
    (b"BM", "BMP-like data with an unknown header"),
)


def _describe(data: bytes) -> str:
    """Say in a few words what ``data`` (not a supported image) looks like."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _describe_iso_bmff(data)
    doctype = matroska_doctype(data)
    if doctype is not None:
        return "WebM video" if doctype == "webm" else "Matroska (MKV) video"
    if data.startswith(b"RIFF"):
        return f"a RIFF container of type {printable(data[8:12])!r}, not WebP"
    text = _as_text(data[:1024])
    if text is not None:
        return _describe_text(text)
    return f"unrecognised binary data (first bytes: {data[:8].hex(' ')})"


def _describe_iso_bmff(data: bytes) -> str:
    """Describe an ISO base media file that is not an image container (MP4, MOV, ...)."""
    brands = read_brands(data)
    major = printable(data[8:12])
    if brands is not None and brands.is_video():
        kind = "QuickTime (MOV)" if is_quicktime(data) else "MP4"
        return f"{kind} video (ISO-BMFF brand {major!r})"
    return f"an ISO-BMFF file such as MP4/MOV video (brand {major!r})"


def _as_text(sample: bytes) -> str | None:
    """Return ``sample`` decoded if it reads as UTF-8 text, else ``None``."""
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = sample[: len(sample) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all(ch.isprintable() or ch in "\t\n\r\f\ufeff" for ch in text):
            return text
        return None
    return None


def _describe_text(text: str) -> str:
    """Describe a text upload without echoing it."""
    head = text.lstrip("\ufeff \t\r\n").lower()
    if head.startswith("<"):
        if "<svg" in head:
            return "SVG (vector graphics are not supported)"
        if "<html" in head or head.startswith("<!doctype html"):
            return "HTML"
        return "XML"
    if head.startswith(("{", "[")):
        return "text (JSON?)"
    return "text"


def printable(raw: bytes) -> str:
    """Render untrusted bytes as printable ASCII for a message."""
    return raw.decode("ascii", "backslashreplace")
