"""What ``nsfwd serve --ray`` adds to Ray Serve's HTTP proxy, so that requests behave as without
it. :func:`proxy_middlewares` is named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, which
``nsfwd serve --ray`` sets for the Ray instance it starts (with the body limits, in
:data:`LIMITS_VARIABLE`).

- **Request ids.** Serve's proxy gives every response an ``x-request-id`` itself: the client's,
  whatever it holds, or a new uuid. The ingress app drops its own
  (:func:`without_request_id_header`), so there is one, and :class:`SaneRequestIdMiddleware`
  replaces a client's id that nsfwd would not echo (too long, odd characters) with a new uuid
  before Serve reads it, so the proxy's header and the id in nsfwd's error messages agree.
- **Bodies.** Serve's proxy reads a request's body as fast as the client sends it, into a queue
  that the ingress replica drains; an endless body would fill the proxy's memory until the
  app's refusal came back. :class:`ReadAheadLimitMiddleware` stops reading once the body is
  past its route's limit (or declares a ``Content-Length`` over it): the app, which then holds
  enough to refuse it, answers in its protocol's format, as it does without Serve. And since
  the proxy reads bodies before the app has checked a key or taken an upload slot (up to its
  1,024 requests in progress), it books each body's size (declared, or its route's limit)
  against ``BodyLimits.total`` in all; a body that does not fit is answered 503 with
  ``Retry-After`` before any of it is read.
"""

from __future__ import annotations

import asyncio
import json
import os

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nsfwd.api.http.middleware import (
    REQUEST_ID_HEADER,
    BodyLimits,
    content_length,
    request_id_of,
    send_text,
)

CALLBACK = f"{__name__}.proxy_middlewares"
"""The import path for ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
LIMITS_VARIABLE = "NSFWD_PROXY_BODY_LIMITS"
READ_AHEAD_RETRY_AFTER_S = 1
"""What a request refused for want of read-ahead room is told to wait."""
"""The environment variable that hands the app's body limits to the proxy (JSON)."""


def limits_to_environment(limits: BodyLimits) -> None:
    """Put ``limits`` where :func:`proxy_middlewares` finds them, in this process's
    environment, which the Ray instance it starts (and so Serve's proxy) inherits."""
    os.environ[LIMITS_VARIABLE] = json.dumps(
        {"default": limits.default, "paths": limits.paths, "total": limits.total}
    )


def limits_from_environment() -> BodyLimits | None:
    """The limits :func:`limits_to_environment` put there, or None."""
    text = os.environ.get(LIMITS_VARIABLE)
    if not text:
        return None
    fields = json.loads(text)
    total = fields.get("total")
    return BodyLimits(
        int(fields["default"]),
        {k: int(v) for k, v in fields["paths"].items()},
        total=None if total is None else int(total),
    )


class SaneRequestIdMiddleware:
    """Put a sane ``x-request-id`` on each request (the client's, or a new uuid)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app`` (Serve's proxy)."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the request's id header before the proxy reads it."""
        if scope["type"] == "http":
            MutableHeaders(scope=scope)[REQUEST_ID_HEADER] = request_id_of(scope)
        await self.app(scope, receive, send)


class ReadAheadLimitMiddleware:
    """Read no more of a request's body than its route accepts (``limits``): once past it, or
    when the declared ``Content-Length`` is over it, wait for the app's answer (the refusal)
    instead of reading on, then tell the proxy the client is gone. Each body books its size
    against ``limits.total`` until its answer is sent; one that does not fit gets 503."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        """Wrap ``app`` (Serve's proxy)."""
        self.app = app
        self.limits = limits
        self.booked = 0
        """Bytes of bodies booked now, by requests in progress."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the proxy with a ``receive`` that stops at the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.of(scope.get("path", ""))
        declared = content_length(scope)
        booking = _booking(scope, declared, limit)
        total = self.limits.total
        if booking and total is not None and self.booked + booking > total:
            await send_text(
                send,
                503,
                f"the server is reading {self.booked:,} bytes of request bodies, as many as it "
                f"reads at once; retry in {READ_AHEAD_RETRY_AFTER_S} s",
                {"Retry-After": str(READ_AHEAD_RETRY_AFTER_S)},
            )
            return
        self.booked += booking
        try:
            await self._bounded(scope, receive, send, limit, declared)
        finally:
            self.booked -= booking

    async def _bounded(
        self, scope: Scope, receive: Receive, send: Send, limit: int, declared: int | None
    ) -> None:
        received = 0
        answered = asyncio.Event()

        async def bounded_receive() -> Message:
            nonlocal received
            if received > limit or (declared is not None and declared > limit):
                await answered.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def watched_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        try:
            await self.app(scope, bounded_receive, watched_send)
        finally:
            answered.set()


def _booking(scope: Scope, declared: int | None, limit: int) -> int:
    """What a request's body may bring: its declared size (none read when over ``limit``), or
    ``limit`` for a chunked one; 0 without a body."""
    if declared is not None:
        return 0 if declared > limit else declared
    chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
    return limit if chunked else 0


def proxy_middlewares() -> list[Middleware]:
    """The middlewares Serve's proxy runs around itself (outermost first), with the limits the
    driver handed over, or else those of the ``NSFWD_*`` settings in the proxy's environment."""
    limits = limits_from_environment()
    if limits is None:  # a cluster started without nsfwd's driver: the settings of its env
        from nsfwd.api.app import body_limits
        from nsfwd.settings import Settings

        limits = body_limits(Settings())
    return [
        Middleware(SaneRequestIdMiddleware),
        Middleware(ReadAheadLimitMiddleware, limits=limits),
    ]


def without_request_id_header(app: ASGIApp) -> ASGIApp:
    """``app`` with its ``x-request-id`` response header dropped: Serve's proxy adds one."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                del MutableHeaders(scope=message)[REQUEST_ID_HEADER]
            await send(message)

        await app(scope, receive, send_without_id if scope["type"] == "http" else send)

    return wrapped
