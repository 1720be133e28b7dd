"""What the bytes are, from their content, never from a name or a client's content type; and
for what is refused, a few words on what it looks like instead."""

from __future__ import annotations

from typing import Final

from nsfwd.intake.containers import (
    AVIF_BRANDS,
    ftyp_brands,
    is_quicktime,
    iso_bmff_kind,
    matroska_doctype,
)
from nsfwd.intake.errors import CorruptImageError, UnsupportedFormatError

SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")
"""Pillow format names that intake accepts, as :func:`sniff_format` returns them."""

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"


def sniff_format(data: bytes) -> str | None:
    """Return ``"JPEG"``, ``"PNG"`` or ``"WEBP"`` from the magic bytes of ``data``, else ``None``.

    Only the signature is checked; whether the rest is valid is for decoding to say.
    """
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
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
        raise UnsupportedFormatError("the input is empty (0 bytes); expected a JPEG, PNG or WebP")
    raise UnsupportedFormatError(
        f"unsupported image format: {_describe(data)}; accepted formats are JPEG, PNG and WebP"
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
    return None


_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
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
    """Describe an ISO base media file (HEIC, AVIF, MP4, MOV...) from its ``ftyp`` brands."""
    brands = ftyp_brands(data)
    if brands is not None and iso_bmff_kind(data) == "image":
        major, compatible = brands
        if ({major} | compatible) & AVIF_BRANDS:
            return "AVIF (ISO-BMFF 'ftyp' box)"
        return "HEIC/HEIF (ISO-BMFF 'ftyp' box)"
    kind = "QuickTime (MOV)" if is_quicktime(data) else "MP4"
    return f"{kind} video (ISO-BMFF brand {printable(data[8:12])!r})"


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
