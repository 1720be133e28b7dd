"""multipart/form-data both ways: a bounded streaming reader for requests, a writer for answers.

The reader drives python-multipart's parser chunk by chunk as the body arrives and keeps parts in
memory, each under a per-name byte limit (parts with other names are counted and discarded), with
at most ``max_parts`` parts; python-multipart bounds the headers of each part (8 lines of about
4 KiB); a filename or Content-Type with control bytes, or over 255 characters, is refused. A body
that does not parse, or ends before its closing boundary, is a :class:`FormError` that says what
was wrong.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from nsfwd.api.http.errors import BadRequestError, PayloadTooLargeError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FORM_DATA = "multipart/form-data"
_TOKEN_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PART_HEADER_CHARS = 255
"""Longest filename or Content-Type a part may carry: what file systems allow for a name, and
what the job store keeps for a media type."""


class FormError(BadRequestError):
    """The body is not the multipart/form-data it claims to be (400)."""


@dataclass
class Part:
    """One part of a multipart/form-data body."""

    name: str
    data: bytes = b""
    filename: str | None = None
    content_type: str | None = None


@dataclass
class _PartInProgress:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    part: Part | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    keep: bool = False


class _FormCollector:
    """python-multipart callbacks that collect parts within their limits."""

    def __init__(self, part_limits: Mapping[str, int], max_parts: int) -> None:
        self.part_limits = part_limits
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.count = 0
        self.current = _PartInProgress()
        self.finished = False

    def on_part_begin(self) -> None:
        self.count += 1
        if self.count > self.max_parts:
            raise FormError(
                f"the body has more than {self.max_parts} parts; send one part named 'job' "
                "and the input image in a part named 'input'"
            )
        self.current = _PartInProgress()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.current.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.current.header_value += data[start:end]

    def on_header_end(self) -> None:
        current = self.current
        current.headers.append((bytes(current.header_name).lower(), bytes(current.header_value)))
        current.header_name.clear()
        current.header_value.clear()

    def on_headers_finished(self) -> None:
        headers = dict(self.current.headers)
        kind, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise FormError(
                f"part {self.count} has no 'Content-Disposition: form-data; name=\"...\"' "
                "header; every part needs a name ('job' or 'input')"
            )
        filename = options.get(b"filename")
        content_type = headers.get(b"content-type", b"").decode("latin-1").strip()
        part = Part(
            name=_text(name),
            filename=None if filename is None else _text(filename),
            content_type=_media_type(content_type),
        )
        if part.filename is not None:
            _check_header_text(part.name, "filename", part.filename)
        _check_header_text(part.name, "Content-Type", content_type)
        self.current.part = part
        self.current.keep = part.name in self.part_limits

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        current = self.current
        assert current.part is not None
        current.size += end - start
        if not current.keep:
            return
        limit = self.part_limits[current.part.name]
        if current.size > limit:
            what = f"part '{current.part.name}'"
            if current.part.filename:
                what += f" ({current.part.filename!r})"
            raise PayloadTooLargeError(
                f"{what} is over {limit:,} bytes ({limit / 1024 / 1024:.2f} MiB), the most this "
                "server accepts for it; send a smaller file"
            )
        current.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        part = self.current.part
        if part is not None:
            part.data = b"".join(self.current.chunks)
            self.parts.append(part)
        self.current = _PartInProgress()

    def on_end(self) -> None:
        self.finished = True


async def read_form(
    content_type: str,
    chunks: AsyncIterator[bytes],
    *,
    part_limits: Mapping[str, int],
    max_parts: int = 16,
) -> list[Part]:
    """Parse a multipart/form-data body as it streams in; return its parts in order.

    Parts whose name is in ``part_limits`` keep their data, each refused with a 400
    (:class:`PayloadTooLargeError`) as soon as it grows past its limit; other parts are returned
    with empty data. Raises :class:`FormError` for a body that is not well-formed
    multipart/form-data.
    """
    kind, options = parse_options_header(content_type)
    if kind != FORM_DATA.encode():
        shown = content_type.split(";", maxsplit=1)[0].strip()[:100] or "none"
        raise FormError(
            f"expected Content-Type {FORM_DATA} (a part named 'job' with the job JSON and a part "
            f"named 'input' with the image), got {shown!r}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError(
            f"Content-Type {FORM_DATA} has no boundary parameter; let your HTTP client build the "
            "multipart body and its header"
        )
    collector = _FormCollector(part_limits, max_parts)
    try:
        parser = MultipartParser(boundary, _callbacks(collector))
        async for chunk in chunks:
            if not collector.finished:
                parser.write(chunk)
    except FormParserError as exc:
        raise FormError(
            f"malformed multipart body ({exc}); check that the boundary in Content-Type is the "
            "one that separates the parts"
        ) from None
    if not collector.finished:
        raise FormError(
            "the multipart body ended before its closing boundary (truncated upload, or a "
            "boundary that does not match Content-Type); send the complete body"
        )
    return collector.parts


def _callbacks(collector: _FormCollector) -> MultipartCallbacks:
    return {
        "on_part_begin": collector.on_part_begin,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_end": collector.on_end,
    }


def _text(raw: bytes) -> str:
    """A header parameter as text: UTF-8 as browsers and fetch send it, else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _check_header_text(part: str, what: str, value: str) -> None:
    """Refuse a part's filename or Content-Type that is too long, or that carries control bytes
    (a NUL among them), which can be neither stored faithfully nor sent back in a header."""
    shown = f"part {part[:64]!r}"
    if _CONTROL.search(value):
        raise FormError(
            f"{shown} has a {what} with control characters (such as NUL); send plain text"
        )
    if len(value) > MAX_PART_HEADER_CHARS:
        raise FormError(
            f"{shown} has a {what} of {len(value):,} characters; at most "
            f"{MAX_PART_HEADER_CHARS} are accepted"
        )


def _media_type(value: str) -> str | None:
    """A part's Content-Type as it may be echoed in a response header: the whole value when it
    is printable ASCII, else just its ``type/subtype``; None when it starts with no media type.
    (Control bytes are refused before this, see :func:`_check_header_text`.)"""
    media_type = _TOKEN_TYPE.match(value)
    if media_type is None:
        return None
    return value if _PRINTABLE.fullmatch(value) else media_type.group(0)


def encode_form(parts: Sequence[Part]) -> tuple[bytes, str]:
    """Encode ``parts`` as multipart/form-data; returns the body and its Content-Type."""
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in part.data for part in parts):
        boundary = uuid.uuid4().hex
    delimiter = b"--" + boundary.encode()
    chunks: list[bytes] = []
    for part in parts:
        disposition = f'form-data; name="{_quote(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quote(part.filename)}"'
        head = f"Content-Disposition: {disposition}\r\n"
        head += f"Content-Type: {part.content_type or 'application/octet-stream'}\r\n\r\n"
        chunks += [delimiter, b"\r\n", head.encode(), part.data, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    return b"".join(chunks), f"{FORM_DATA}; boundary={boundary}"


def _quote(value: str) -> str:
    """Escape a name or filename as the WHATWG multipart/form-data encoding does."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
