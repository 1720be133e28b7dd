"""Pure ASGI wrappers at the edge of the app: request ids, and bounds on what a request carries.

:class:`BodyLimitMiddleware` refuses an oversized body while it streams in, never after
buffering it: a ``Content-Length`` over the limit is refused before the first byte is read (so a
client that sent ``Expect: 100-continue`` never sends it), and a chunked body is counted as it
arrives. A client that stops sending mid-body is let go after ``idle_timeout_s``. The refusals
are raised from ``receive()`` as :class:`~nsfwd.api.errors.ApiError`, so the route that is reading
renders them in its own protocol's format.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nsfwd.api.errors import PayloadTooLargeError, RequestTimeoutError

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")

MAX_HEADER_BYTES = 8 * 1024
"""Largest total size of a request's header lines (nginx and Apache use 8 KiB per line)."""
BODY_IDLE_TIMEOUT_S = 30.0
"""How long a client may go without sending any of its body before it gets 408."""
_MIB = 1024 * 1024


class RequestIdMiddleware:
    """Give every HTTP response an ``x-request-id``: the client's own if it is sane, else a uuid.

    The id is also stored as ``request.state.request_id`` for logs and error messages.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Tag the scope and the response start with the request id."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's ``x-request-id`` if it is sane, else a new uuid."""
    return _incoming_request_id(scope) or str(uuid.uuid4())


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if _SANE_REQUEST_ID.fullmatch(text) else None
    return None


class BodyLimitMiddleware:
    """Bound each HTTP request: header bytes (431), body bytes (400, see
    :class:`~nsfwd.api.errors.PayloadTooLargeError`) and body idle time (408)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int = MAX_HEADER_BYTES,
        idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        hint: str = "send a smaller body",
        path_limits: Mapping[str, int] | None = None,
    ) -> None:
        """Wrap ``app`` with these limits; ``hint`` ends the size refusal's message (what to do
        instead); ``path_limits`` gives some paths a body limit of their own (OpenAI's
        moderation API carries images as base64, a third larger than the bytes)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = dict(path_limits or {})
        self.hint = hint
        self.max_header_bytes = max_header_bytes
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse oversized headers at once; hand the app a ``receive`` that enforces the rest."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            await _send_text(
                send,
                431,
                f"request headers are {header_bytes:,} bytes; this server accepts at most "
                f"{self.max_header_bytes:,}. Send fewer or shorter headers.",
            )
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_body_bytes)
        await self.app(scope, _BoundedBody(self, limit, _content_length(scope), receive), send)

    def too_large(self, size: str, limit: int | None = None) -> PayloadTooLargeError:
        """The error for a body of ``size`` (a phrase) over the limit (by default the
        server-wide one)."""
        limit = self.max_body_bytes if limit is None else limit
        return PayloadTooLargeError(
            f"request body is {size}; this server accepts at most {limit:,} bytes "
            f"({limit / _MIB:.2f} MiB) per request: {self.hint}"
        )


class _BoundedBody:
    """The ``receive`` callable handed to the app: counts, times and refuses body chunks."""

    def __init__(
        self, limits: BodyLimitMiddleware, max_bytes: int, declared: int | None, receive: Receive
    ) -> None:
        self.limits = limits
        self.max_bytes = max_bytes
        self.declared = declared
        self.receive = receive
        self.received = 0
        self.complete = False

    async def __call__(self) -> Message:
        if self.complete:  # the body is in: later messages (http.disconnect) may take forever
            return await self.receive()
        if self.declared is not None and self.declared > self.max_bytes:
            raise self.limits.too_large(f"{self.declared:,} bytes (Content-Length)", self.max_bytes)
        try:
            message = await asyncio.wait_for(self.receive(), self.limits.idle_timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no request body data for {self.limits.idle_timeout_s:g} s after "
                f"{self.received:,} bytes; send the whole body without pausing"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                raise self.limits.too_large(
                    f"over {self.received:,} bytes and still coming", self.max_bytes
                )
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True
        return message


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_text(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
