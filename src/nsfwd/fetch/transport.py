"""An httpx transport that connects only to the addresses the fetch policy checked.

The pinning lives in a network backend for httpcore: ``connect_tcp`` resolves the URL's host once
(:func:`nsfwd.fetch.policy.resolve`, which checks every address) and connects to a checked IP,
so there is no second DNS lookup for a rebinding attacker to answer differently. httpcore then
calls ``start_tls(server_hostname=<URL host>)`` on the stream, so TLS still names the URL's host,
for SNI and for certificate verification. :func:`safe_async_client` wraps it in an
``httpx.AsyncClient`` that any caller, such as webhook delivery, can use.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager

import httpcore
import httpx

from nsfwd import __version__
from nsfwd.fetch.policy import (
    FetchFailedError,
    FetchPolicy,
    UnsafeURLError,
    location_url,
    resolve,
    shorten,
    validate_url,
)

USER_AGENT = f"nsfwd/{__version__}"
"""What webhook deliveries announce themselves as."""
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
"""What image fetches send: a browser's, so that a host cannot tell nsfwd from a viewer and
serve it a clean image while viewers get another (cloaking)."""
BROWSER_IMAGE_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
"""The ``Accept`` a browser sends for an ``<img>``."""


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to addresses the policy allows.

    ``connect_tcp`` gets the URL's host; it resolves it once, checks every address and connects
    to a checked IP. httpcore then calls ``start_tls(server_hostname=<URL host>)`` on the
    returned stream, so SNI and certificate checks still use the name.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve(host, port, self._policy)
        except TimeoutError:
            raise httpcore.ConnectTimeout(
                f"resolving {host} took longer than {timeout} s"
            ) from None
        except FetchFailedError as exc:
            raise httpcore.ConnectError(exc.message) from None
        error: Exception | None = None
        for address in addresses:  # every one was checked; try them in the resolver's order
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address to connect to")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeURLError("unix sockets are never fetched from")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


_HTTPCORE_TO_HTTPX: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Re-raise httpcore's exceptions as the httpx ones that httpx's own transport raises."""
    try:
        yield
    except Exception as exc:
        for source, target in _HTTPCORE_TO_HTTPX:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """certifi's roots (or SSL_CERT_FILE / SSL_CERT_DIR), loaded once and shared."""
    return httpx.create_ssl_context()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections go through _PinnedBackend.

    httpx's own AsyncHTTPTransport takes no network backend, hence this thin equivalent. Every
    request's URL also passes :func:`validate_url`, so redirects followed by httpx are checked
    as well.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=policy.ssl_context or _default_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_PinnedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        validate_url(request.url, self._policy)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def safe_async_client(
    policy: FetchPolicy, *, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    """An httpx client that only ever connects to addresses ``policy`` allows.

    Every request URL is validated and every connection resolves, checks and pins its
    addresses; a redirect whose Location the policy refuses raises UnsafeURLError whether or not
    the caller follows redirects (httpx's default is not to). Proxy and netrc settings from the
    environment are ignored. Network failures raise httpx's usual exceptions. Timeouts come
    from ``policy.timeouts`` (connect and read; the total is the caller's to enforce).
    """

    async def check_location(response: httpx.Response) -> None:
        location = response.headers.get("location")
        if response.is_redirect and location:
            target = response.request.url
            try:
                validate_url(location_url(target, location), policy)
            except UnsafeURLError as exc:
                raise UnsafeURLError(
                    f"{shorten(str(target))} redirects to {shorten(location)}, which is "
                    f"refused: {exc.message}"
                ) from None

    return httpx.AsyncClient(
        transport=PinnedTransport(policy),
        trust_env=False,
        timeout=httpx_timeout(policy),
        max_redirects=policy.max_redirects,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        event_hooks={"response": [check_location]},
    )


def httpx_timeout(policy: FetchPolicy) -> httpx.Timeout:
    """The policy's connect and read timeouts in httpx's terms (writes get the read one)."""
    timeouts = policy.timeouts
    return httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect
    )
