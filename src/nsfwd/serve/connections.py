"""What one connection may hold of a server: uvicorn's limits, and a deadline for headers.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and, when asked, the
connections and requests in progress (``limit_concurrency``: past it, 503), but a client that
sends a request's headers a byte at a time, or never finishes them, holds its connection (and
a slot of that limit) for as long as it likes. :class:`HeaderDeadlineProtocol` closes a
connection whose headers have not all arrived ``header_timeout_s`` after it opened, or after
the first byte of its next request. :func:`uvicorn_options` gives ``nsfwd serve`` and each
HTTP worker of ``--http-workers`` these settings. On the open internet, put a reverse proxy in
front as well (README: "On the open internet").
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from nsfwd.settings import Settings

_Base: Any = AutoHTTPProtocol  # httptools' protocol where it is installed, else h11's


class HeaderDeadlineProtocol(_Base):  # type: ignore[misc]
    """uvicorn's HTTP protocol, closing connections whose request headers come too slowly."""

    header_timeout_s: ClassVar[float] = 10.0
    """Set by :func:`uvicorn_options` (class-wide: uvicorn builds the protocol itself)."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        """Start the clock for the first request's headers."""
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; keep the clock running until a request's headers are in."""
        super().data_received(data)
        if self._awaiting_headers():
            if self._header_deadline is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` options that bound what connections hold, from ``settings``."""
    HeaderDeadlineProtocol.header_timeout_s = settings.header_timeout_s
    return {
        "http": HeaderDeadlineProtocol,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s,
    }
