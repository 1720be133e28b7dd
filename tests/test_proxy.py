"""What ``nsfwd serve --ray`` runs in Serve's proxy (``nsfwd.serve.ray.proxy``), tried on a
plain uvicorn server without Ray: the middleware is pure ASGI, and the app behind it stands in
for the proxy, reading each body as fast as the client sends it.

Issue 21: the proxy reads bodies before the app checks keys or upload slots, up to its 1,024
requests in progress times the body limit. Now bodies book their size against a total, and one
that does not fit is answered 503 before any of it is read.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack

import pytest
from starlette.types import Receive, Scope, Send

from nsfwd.api.app import body_limits
from nsfwd.api.http.middleware import BodyLimits
from nsfwd.serve.ray.proxy import (
    LIMITS_VARIABLE,
    ReadAheadLimitMiddleware,
    limits_from_environment,
    limits_to_environment,
)
from nsfwd.settings import Settings
from servers import serve_app
from test_bad_input import read_response


async def read_all(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, then answer 200 with its size."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def started_body(url: str, length: int) -> socket.socket:
    """A POST of ``length`` bytes whose head and first byte are sent; the rest is not yet."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\nx".encode())
    return sock


def test_bodies_read_ahead_are_bounded_in_all() -> None:
    """Two 1,000-byte bodies in progress book 2,000 of a 2,500-byte total: a third is refused
    503 at once, without a byte of it read; once one ends, another fits. Before, the proxy
    read every body of every request in progress."""
    app = ReadAheadLimitMiddleware(read_all, BodyLimits(default=1000, total=2500))
    with serve_app(app) as url, ExitStack() as held:
        first = held.enter_context(started_body(url, 1000))
        held.enter_context(started_body(url, 1000))
        time.sleep(0.3)
        third = held.enter_context(started_body(url, 1000))
        refused = read_response(third)
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
        assert b"retry-after: 1" in refused.lower()
        first.sendall(b"x" * 999)
        assert b'{"size": 1000}' in read_response(first)
        fourth = held.enter_context(started_body(url, 1000))
        fourth.sendall(b"x" * 999)
        assert b'{"size": 1000}' in read_response(fourth)
        assert app.booked == 1000  # the second, still in progress


def test_the_total_reaches_the_proxy_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = body_limits(Settings(max_uploads=4, http_workers=2))
    largest = max(limits.paths.values())  # a video to the async route
    assert limits.total == 4 * 2 * largest  # what the HTTP processes read at once, at most
    monkeypatch.delenv(LIMITS_VARIABLE, raising=False)
    limits_to_environment(limits)  # (monkeypatch restores the variable afterwards)
    again = limits_from_environment()
    assert again is not None and again.total == limits.total
