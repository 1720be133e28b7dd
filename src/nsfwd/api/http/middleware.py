"""Pure ASGI wrappers at the edge of the app: request ids, and bounds on what a request carries.

:class:`BodyLimitMiddleware` refuses an oversized body while it streams in, never after
buffering it: a ``Content-Length`` over the limit is refused before the first byte is read (so a
client that sent ``Expect: 100-continue`` never sends it), and a chunked body is counted as it
arrives. A client that stops sending mid-body is let go after ``idle_timeout_s``, and one that
trickles it (slowloris) once the whole body has taken ``body_timeout_s`` (408: a slow body is the
client's fault, so not a status retrying clients send again). At most ``max_uploads`` bodies are
read at once; the slot is taken when the app first reads the body (after the route has checked
the caller's key and its share) and given back once the body is in, so one more is refused with
503 and ``Retry-After``. The refusals are raised from ``receive()`` as
:class:`~nsfwd.api.http.errors.ApiError`, so the route that is reading renders them in its own
protocol's format.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nsfwd.api.http.errors import PayloadTooLargeError, RequestTimeoutError, UnavailableError

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")

MAX_HEADER_BYTES = 8 * 1024
"""Largest total size of a request's header lines (nginx and Apache use 8 KiB per line)."""
BODY_IDLE_TIMEOUT_S = 30.0
"""How long a client may go without sending any of its body before it gets 408."""
BODY_TIMEOUT_S = 60.0
"""How long a whole body may take to arrive, from the app's first read, before 408."""
UPLOADS_RETRY_AFTER_S = 1
"""What a request refused for want of an upload slot is told to wait."""
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


@dataclass(frozen=True)
class BodyLimits:
    """The largest request body: ``paths`` gives some paths a limit of their own (OpenAI's
    moderation API carries images as base64, a third larger than the bytes), ``default`` is
    everyone else's; ``hint`` ends a refusal's message (what to do instead); ``total`` bounds
    what a host in front of the app reads ahead of it."""

    default: int
    paths: Mapping[str, int] = field(default_factory=dict)
    hint: str = "send a smaller body"
    total: int | None = None
    """Bytes of request bodies a host may read ahead of the app in all (Serve's proxy, which
    reads bodies before the app has checked keys or upload slots); ``None``: no bound."""

    def of(self, path: str) -> int:
        """The limit of a request to ``path``."""
        return self.paths.get(path, self.default)

    def refusal(self, size: str, limit: int) -> str:
        """Why a body of ``size`` (a phrase) is refused under ``limit``, and what to do."""
        return (
            f"request body is {size}; this server accepts at most {limit:,} bytes "
            f"({limit / _MIB:.2f} MiB) per request: {self.hint}"
        )


class BodyLimitMiddleware:
    """Bound each HTTP request: header bytes (431), body bytes (400, see
    :class:`~nsfwd.api.http.errors.PayloadTooLargeError`), body idle time and total time (408), and
    bodies read at once (503)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: BodyLimits,
        max_header_bytes: int = MAX_HEADER_BYTES,
        idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_uploads: int | None = None,
    ) -> None:
        """Wrap ``app`` with these limits (``max_uploads`` ``None``: no cap on bodies read at
        once)."""
        self.app = app
        self.limits = limits
        self.max_header_bytes = max_header_bytes
        self.idle_timeout_s = idle_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_uploads = max_uploads
        self.uploads = 0
        """Bodies being read now (their upload slots)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse oversized headers at once; hand the app a ``receive`` that enforces the rest."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            await send_text(
                send,
                431,
                f"request headers are {header_bytes:,} bytes; this server accepts at most "
                f"{self.max_header_bytes:,}. Send fewer or shorter headers.",
            )
            return
        limit = self.limits.of(scope.get("path", ""))
        body = _BoundedBody(self, limit, content_length(scope), receive)
        try:
            await self.app(scope, body, send)
        finally:
            body.release_slot()

    def take_slot(self) -> None:
        """Take an upload slot, or raise 503 when every one is taken."""
        if self.max_uploads is not None and self.uploads >= self.max_uploads:
            raise UnavailableError(
                f"the server is reading {self.uploads} request bodies, as many as it reads at "
                f"once; retry in {UPLOADS_RETRY_AFTER_S} s",
                UPLOADS_RETRY_AFTER_S,
            )
        self.uploads += 1

    def too_large(self, size: str, limit: int) -> PayloadTooLargeError:
        """The error for a body of ``size`` (a phrase) over ``limit``."""
        return PayloadTooLargeError(self.limits.refusal(size, limit))


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
        self.deadline: float | None = None
        """When the whole body must be in (event-loop time), set by the first read."""
        self.holds_slot = False

    async def __call__(self) -> Message:
        if self.complete:  # the body is in: later messages (http.disconnect) may take forever
            return await self.receive()
        if self.declared is not None and self.declared > self.max_bytes:
            raise self.limits.too_large(f"{self.declared:,} bytes (Content-Length)", self.max_bytes)
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.limits.take_slot()
            self.holds_slot = True
            self.deadline = loop.time() + self.limits.body_timeout_s
        left = self.deadline - loop.time()
        try:
            message = await asyncio.wait_for(self.receive(), min(self.limits.idle_timeout_s, left))
        except TimeoutError:
            self.release_slot()
            if self.deadline - loop.time() <= 0:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                    f"({self.received:,} bytes came); send it faster, or a smaller image"
                ) from None
            raise RequestTimeoutError(
                f"no request body data for {self.limits.idle_timeout_s:g} s after "
                f"{self.received:,} bytes; send the whole body without pausing"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.release_slot()
                raise self.limits.too_large(
                    f"over {self.received:,} bytes and still coming", self.max_bytes
                )
            self.complete = not message.get("more_body", False)
        else:
            self.complete = True
        if self.complete:
            self.release_slot()
        return message

    def release_slot(self) -> None:
        """Give the upload slot back (the body is in, refused, or the request is over)."""
        if self.holds_slot:
            self.holds_slot = False
            self.limits.uploads -= 1


def content_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``; None when absent (a chunked body) or not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_text(
    send: Send, status: int, text: str, headers: Mapping[str, str] | None = None
) -> None:
    """Answer ``status`` with ``text`` as plain text (and ``headers``), and close the
    connection: for refusals made before any route runs."""
    body = (text + "\n").encode()
    extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
