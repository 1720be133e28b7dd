"""What ``nsfwd serve --ray`` adds to Ray Serve's HTTP proxy, so request ids stay as without it.

Serve's proxy gives every response an ``x-request-id`` itself: the client's, whatever it holds,
or a new uuid. The ingress app drops its own (:func:`without_request_id_header`), so there is
one; and :func:`proxy_middlewares` (named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``,
which ``nsfwd serve --ray`` sets for the Ray instance it starts) replaces a client's id that
nsfwd would not echo (too long, odd characters) with a new uuid before Serve reads it, so the
proxy's header and the id in nsfwd's error messages agree.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nsfwd.api.middleware import REQUEST_ID_HEADER, request_id_of

CALLBACK = f"{__name__}.proxy_middlewares"
"""The import path for ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""


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


def proxy_middlewares() -> list[Middleware]:
    """The middlewares Serve's proxy runs around itself (outermost)."""
    return [Middleware(SaneRequestIdMiddleware)]


def without_request_id_header(app: ASGIApp) -> ASGIApp:
    """``app`` with its ``x-request-id`` response header dropped: Serve's proxy adds one."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                del MutableHeaders(scope=message)[REQUEST_ID_HEADER]
            await send(message)

        await app(scope, receive, send_without_id if scope["type"] == "http" else send)

    return wrapped
