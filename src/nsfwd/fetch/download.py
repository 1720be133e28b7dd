"""GET a URL's body under the fetch policy: redirects followed by hand, a size cap, timeouts.

Every hop is checked (:func:`nsfwd.fetch.policy.validate_url`) before it is requested through the
pinned transport (:class:`nsfwd.fetch.transport.PinnedTransport`), which checks and pins its
addresses; the body is streamed and refused once it exceeds ``policy.max_bytes``, and refused
unread when it comes with a Content-Encoding other than identity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from nsfwd.fetch.capped import OverCapError, read_capped
from nsfwd.fetch.policy import (
    FetchFailedError,
    FetchPolicy,
    UnsafeURLError,
    location_url,
    shorten,
    validate_url,
)
from nsfwd.fetch.transport import (
    BROWSER_IMAGE_ACCEPT,
    BROWSER_USER_AGENT,
    PinnedTransport,
    httpx_timeout,
)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def fetch(url: str, policy: FetchPolicy) -> bytes:
    """GET ``url`` and return its body, following at most ``policy.max_redirects`` redirects.

    Each hop is validated and its addresses checked and pinned; the body is streamed and refused
    once it exceeds ``policy.max_bytes``. Raises UnsafeURLError when the URL or a redirect leads
    somewhere refused, and FetchFailedError for DNS, network, status, size and time failures.
    """
    total = policy.timeouts.total
    try:
        async with asyncio.timeout(total), PinnedTransport(policy) as transport:
            return await _follow(transport, url, policy)
    except TimeoutError:
        raise FetchFailedError(
            f"fetching {shorten(url)} took longer than {total:g} s in all; gave up"
        ) from None


async def _follow(transport: PinnedTransport, url: str, policy: FetchPolicy) -> bytes:
    """The body at the end of ``url``'s redirects; each hop checked before it is requested.

    Requests go straight to the pinned transport: redirects are this loop's business alone.
    """
    target = validate_url(url, policy)
    for hop in range(policy.max_redirects + 1):
        with _hop_refusals(url, target, hop), _network_failures(target, policy):
            response = await _get(transport, target, policy)
            try:
                if response.status_code not in REDIRECT_STATUSES:
                    _check_status(response)
                    _check_encoding(response)
                    return await _read_capped(response, policy.max_bytes)
                location = response.headers.get("location")
                if not location:
                    raise FetchFailedError(
                        f"{shorten(str(target))} answered {response.status_code} "
                        "without a Location header"
                    )
            finally:
                await response.aclose()
        target = _next_hop(url, target, location, hop + 1, policy)
    raise FetchFailedError(
        f"{shorten(url)} redirected more than {policy.max_redirects} times; gave up"
    )


async def _get(transport: PinnedTransport, url: httpx.URL, policy: FetchPolicy) -> httpx.Response:
    """Send one GET for ``url``; the response's body is still to be read."""
    headers = {
        "User-Agent": BROWSER_USER_AGENT,
        "Accept": BROWSER_IMAGE_ACCEPT,
        "Accept-Encoding": "identity",
    }
    extensions = {"timeout": httpx_timeout(policy).as_dict()}
    request = httpx.Request("GET", url, headers=headers, extensions=extensions)
    response = await transport.handle_async_request(request)
    response.request = request
    return response


def _next_hop(
    url: str, current: httpx.URL, location: str, hop: int, policy: FetchPolicy
) -> httpx.URL:
    """The URL a Location header leads to, validated like the first one."""
    with _hop_refusals(url, location, hop):
        following = location_url(current, location)
    with _hop_refusals(url, following, hop):
        return validate_url(following, policy)


@contextmanager
def _hop_refusals(url: str, target: httpx.URL | str, hop: int) -> Iterator[None]:
    """Name the redirect hop in refusals that happen after the first request."""
    try:
        yield
    except UnsafeURLError as exc:
        if hop == 0:
            raise
        raise UnsafeURLError(
            f"{shorten(url)} redirected (hop {hop}) to {shorten(str(target))}, which is "
            f"refused: {exc.message}"
        ) from None


@contextmanager
def _network_failures(target: httpx.URL, policy: FetchPolicy) -> Iterator[None]:
    """httpx's exceptions as FetchFailedError, with the limit that ran out if it was a timeout."""
    shown = shorten(str(target))
    try:
        yield
    except httpx.ConnectTimeout:
        raise FetchFailedError(
            f"connecting to {shown} took longer than {policy.timeouts.connect:g} s"
        ) from None
    except httpx.TimeoutException:
        raise FetchFailedError(
            f"{shown} sent nothing for {policy.timeouts.read:g} s; gave up"
        ) from None
    except httpx.HTTPError as exc:
        raise FetchFailedError(f"could not fetch {shown}: {exc or type(exc).__name__}") from None


def _check_status(response: httpx.Response) -> None:
    if not response.is_success:
        raise FetchFailedError(
            f"{shorten(str(response.url))} answered {response.status_code} "
            f"{response.reason_phrase}".rstrip()
        )


def _check_encoding(response: httpx.Response) -> None:
    """Refuse a body sent with any Content-Encoding but identity, before reading it.

    The request asks for identity; inflating a body the server compressed anyway would let a
    few kilobytes of gzip grow to any size before the byte cap could count them.
    """
    value = response.headers.get("content-encoding", "")
    codings = [coding.strip().lower() for coding in value.split(",") if coding.strip()]
    if any(coding != "identity" for coding in codings):
        raise FetchFailedError(
            f"{shorten(str(response.url))} sent its body with Content-Encoding "
            f"{shorten(value.strip(), 40)}, which is not accepted: only unencoded (identity) "
            "bodies are fetched"
        )


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The body, refused as soon as its declared or counted size exceeds ``max_bytes``."""
    shown = shorten(str(response.url))
    declared = response.headers.get("content-length")
    try:
        return await read_capped(response.aiter_raw(), max_bytes, content_length=declared)
    except OverCapError as exc:
        if exc.declared:
            raise FetchFailedError(
                f"{shown} is {exc.size} bytes, over the {max_bytes}-byte limit"
            ) from None
        raise FetchFailedError(
            f"{shown} sent more than {max_bytes} bytes, over the limit; stopped reading"
        ) from None
