"""nsfwd.fetch: image URLs fetched without ever reaching a private address.

An image host listens on 127.0.0.2 (allowed through ``allow_networks``); a canary listens on
127.0.0.1 at the same port and records every connection it receives. Every refusal test would
land on the canary if the refusal failed, and the canary must stay empty. No traffic leaves
127.0.0.0/8: other addresses are only classified, never connected to, and test names resolve
through an injected resolver.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from ipaddress import ip_address
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hosts import Canary, names
from nsfwd.fetch import (
    FetchFailedError,
    FetchPolicy,
    FetchTimeouts,
    UnsafeURLError,
    address_refusal,
    check_address,
    check_url,
    fetch,
    parse_networks,
    safe_async_client,
    system_resolver,
    validate_url,
)
from nsfwd.settings import Settings
from servers import serve_app

T = TypeVar("T")
IMAGE = bytes(range(256)) * 800  # 200 KiB, every byte value
CHUNK = 64 * 1024
produced: dict[str, int] = {}  # chunks each streaming endpoint has generated so far


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


# --- The servers -------------------------------------------------------------------------------


async def image(request: Request) -> Response:
    return Response(IMAGE, media_type="application/octet-stream")


async def redirect(request: Request) -> Response:
    status = int(request.query_params.get("status", "302"))
    return Response(status_code=status, headers={"location": request.query_params["to"]})


async def chain(request: Request) -> Response:
    """``/chain/N`` redirects N times, ending at ``to`` (default /image)."""
    left = int(request.path_params["n"])
    to = request.query_params.get("to", "/image")
    following = f"/chain/{left - 1}?to={quote(to, safe='')}" if left > 1 else to
    return Response(status_code=302, headers={"location": following})


async def status(request: Request) -> Response:
    return Response(b"no", status_code=int(request.path_params["code"]))


async def headers(request: Request) -> Response:
    return JSONResponse(dict(request.headers))


async def echo(request: Request) -> Response:
    return Response(await request.body())


def _counted(request: Request, name: str, chunks: int, delay: float) -> Any:
    """``chunks`` chunks of 64 KiB, counted in ``produced``; stops once the client has gone."""

    async def body() -> Any:
        produced[name] = 0
        for _ in range(chunks):
            if await request.is_disconnected():
                return
            produced[name] += 1
            yield b"x" * CHUNK
            await asyncio.sleep(delay)

    return body()


async def declared(request: Request) -> Response:
    """Declares its full (large) size in Content-Length."""
    chunks = int(request.query_params["chunks"])
    return StreamingResponse(
        _counted(request, "declared", chunks, 0.002),
        headers={"content-length": str(chunks * CHUNK)},
    )


async def stream(request: Request) -> Response:
    """Chunked transfer, no Content-Length: only counting the bytes can stop it."""
    chunks = int(request.query_params["chunks"])
    delay = float(request.query_params.get("delay", "0.002"))
    return StreamingResponse(_counted(request, "stream", chunks, delay))


async def encoded(request: Request) -> Response:
    """A body labelled with ``?encoding=`` (gzip: 20 MiB of zeros, gzipped to about 20 KiB)."""
    encoding = request.query_params["encoding"]
    body = gzip.compress(bytes(20 * 1024 * 1024)) if encoding == "gzip" else IMAGE
    return Response(body, headers={"content-encoding": encoding})


async def stall(request: Request) -> Response:
    """Answers nothing until the client gives up (or 5 s pass)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.05)
    return Response(b"too late")


APP = Starlette(
    routes=[
        Route("/image", image),
        Route("/redirect", redirect),
        Route("/chain/{n:int}", chain),
        Route("/status/{code:int}", status),
        Route("/headers", headers),
        Route("/echo", echo, methods=["POST"]),
        Route("/declared", declared),
        Route("/stream", stream),
        Route("/stall", stall),
        Route("/encoded", encoded),
    ]
)


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    """The image host's base URL, ``http://127.0.0.2:PORT``."""
    with serve_app(APP, host="127.0.0.2", timeout_graceful_shutdown=1) as url:
        yield url


@pytest.fixture(scope="module")
def canary_port(image_host: str) -> int:
    """The canary (conftest.py) listens at this module's image host's port."""
    return httpx.URL(image_host).port or 0


def policy(**changes: Any) -> FetchPolicy:
    """The image host allowed, http allowed, test names, small limits."""
    base = FetchPolicy(
        allow_networks=["127.0.0.2/32"],
        allow_http=True,
        max_bytes=len(IMAGE),
        timeouts=FetchTimeouts(connect=2, read=2, total=10),
        resolver=names,
    )
    return replace(base, **changes)


def test_the_canary_records_connections(canary: Canary) -> None:
    with socket.create_connection(("127.0.0.1", canary.port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert conn.recv(1024).endswith(b"canary")
    assert canary.hits == [b"GET / HTTP/1.1\r\n\r\n"]
    canary.hits.clear()


# --- Address classification (nothing is connected to) -----------------------------------------

REFUSED = {
    "10.0.0.1": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "169.254.169.254": "link-local",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.255": "carrier-grade NAT",
    "0.0.0.0": "this network",
    "0.1.2.3": "this network",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "192.0.0.8": "IETF",
    "192.0.2.1": "documentation",
    "198.18.0.1": "benchmarking",
    "198.51.100.1": "documentation",
    "203.0.113.1": "documentation",
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "fc00::1": "unique-local",
    "fd12:3456::1": "unique-local",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    "::ffff:127.0.0.1": "IPv4-mapped form of 127.0.0.1, a loopback",
    "::ffff:10.0.0.1": "IPv4-mapped form of 10.0.0.1, a private",
    "::ffff:169.254.169.254": "link-local",
    "::7f00:1": "IPv4-compatible",
    "::a00:1": "IPv4-compatible",
    "64:ff9b::a00:1": "NAT64 form of 10.0.0.1",
    "64:ff9b::7f00:1": "NAT64 form of 127.0.0.1",
    "64:ff9b:1::a00:1": "local-use NAT64",
    "2002:0a00:0001::1": "6to4 form of 10.0.0.1",
    "2002:7f00:1::": "6to4 form of 127.0.0.1",
    "2001::1": "Teredo",
    "2001:db8::1": "documentation",
    "100::1": "discard-only",
    "5f00::1": "reserved",
    "::2": "IPv4-compatible",
}
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.169.0.1",
    "2606:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "why"), REFUSED.items())
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    refusal = address_refusal(address)
    assert refusal is not None
    assert why in refusal


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None


def test_allowed_networks_exempt_their_addresses_only() -> None:
    allowing = FetchPolicy(allow_networks=["10.1.0.0/16", "fd00::/8", "127.0.0.2"])
    assert str(check_address("10.1.2.3", allowing)) == "10.1.2.3"
    assert check_address("::ffff:10.1.2.3", allowing) == ip_address("::ffff:10.1.2.3")
    assert str(check_address("fd00::5", allowing)) == "fd00::5"
    assert str(check_address("127.0.0.2", allowing)) == "127.0.0.2"
    for refused in ["10.2.0.1", "127.0.0.1", "fc00::1", "169.254.169.254"]:
        with pytest.raises(UnsafeURLError, match="NSFWD_FETCH_ALLOW_NETWORKS"):
            check_address(refused, allowing)
    assert allowing.allow_networks == ("10.1.0.0/16", "fd00::/8", "127.0.0.2/32")


def test_a_refusal_names_the_host_but_not_what_it_resolves_to() -> None:
    """Saying which internal address a name leads to would map the intranet for an attacker."""
    for address in ("10.0.0.1", "::ffff:10.0.0.1"):
        with pytest.raises(UnsafeURLError) as caught:
            check_address(address, FetchPolicy(), host="intranet.test")
        message = caught.value.message
        assert message.startswith("intranet.test resolves to a private address;"), message
        assert "10.0" not in message and "ffff" not in message
    with pytest.raises(UnsafeURLError) as caught:  # a literal address in the URL is the caller's
        check_address("10.0.0.1", FetchPolicy())
    assert caught.value.message.startswith("10.0.0.1 is a private address (10.0.0.0/8)")


def test_networks_must_be_cidrs() -> None:
    assert [str(n) for n in parse_networks([" 10.0.0.7/8", "::1"])] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300/8' is not a network"):
        FetchPolicy(allow_networks=["10.0.0.300/8"])


def test_settings_build_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_NETWORKS", " 10.0.0.0/8, fd00::/8 ,,")
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_HTTP", "true")
    monkeypatch.setenv("NSFWD_MAX_IMAGE_BYTES", "12345")
    settings = Settings()
    assert settings.fetch_allow_networks == ["10.0.0.0/8", "fd00::/8"]
    built = settings.fetch_policy
    assert built.allow_networks == ("10.0.0.0/8", "fd00::/8")
    assert built.allow_http
    assert built.max_bytes == 12345
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_NETWORKS", "intranet")
    with pytest.raises(ValueError, match="fetch_allow_networks"):
        Settings()


def test_webhooks_have_their_own_allowed_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """NSFWD_WEBHOOK_ALLOW_NETWORKS is parsed like NSFWD_FETCH_ALLOW_NETWORKS and builds the
    webhook policy alone; NSFWD_FETCH_ALLOW_HTTP applies to both."""
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_NETWORKS", "10.0.0.0/8")
    monkeypatch.setenv("NSFWD_WEBHOOK_ALLOW_NETWORKS", " 10.9.0.7/16 ,,")
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_HTTP", "1")
    settings = Settings()
    assert settings.webhook_allow_networks == ["10.9.0.0/16"]
    hooks, images = settings.webhook_policy, settings.fetch_policy
    assert hooks.allow_networks == ("10.9.0.0/16",) and hooks.allow_http
    assert images.allow_networks == ("10.0.0.0/8",)
    with pytest.raises(UnsafeURLError, match="NSFWD_WEBHOOK_ALLOW_NETWORKS"):
        check_address("10.1.2.3", hooks)
    assert check_address("10.9.2.3", hooks) == ip_address("10.9.2.3")
    monkeypatch.delenv("NSFWD_WEBHOOK_ALLOW_NETWORKS")
    assert Settings().webhook_policy.allow_networks == ()
    monkeypatch.setenv("NSFWD_WEBHOOK_ALLOW_NETWORKS", "intranet")
    with pytest.raises(ValueError, match="webhook_allow_networks"):
        Settings()


def test_the_defaults_refuse_http_and_allow_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSFWD_FETCH_ALLOW_NETWORKS", raising=False)
    monkeypatch.delenv("NSFWD_FETCH_ALLOW_HTTP", raising=False)
    built = Settings().fetch_policy
    assert built == FetchPolicy()
    assert built.timeouts == FetchTimeouts(connect=5, read=10, total=30)
    assert (built.max_bytes, built.max_redirects) == (10 * 1024 * 1024, 5)


# --- URL checks that need no network -----------------------------------------------------------

BAD_URLS = {
    "data:image/png;base64,iVBORw0KGgo=": "data: URIs are not accepted",
    "DATA:image/png;base64,iVBORw0KGgo=": "data: URIs are not accepted",
    "ftp://images.test/a.png": "ftp: scheme",
    "file:///etc/passwd": "file: scheme",
    "gopher://images.test/": "gopher: scheme",
    "/image": "not an absolute URL",
    "//images.test/image": "not an absolute URL",
    "https://user@images.test/a.png": "credentials",
    "https://user:secret@images.test/a.png": "credentials",
    "https://images.test\\@evil.test/": "credentials",
    "https:///a.png": "has no host",
    "https://:443/a.png": "has no host",
    "https://images.test:99999/": "port 99999",
    "https://images.test/a b.png": "spaces or control characters",
    "https://images.test/\r\nX-Evil: 1": "spaces or control characters",
    "https://ima%67es.test/": "malformed host",
    "https://exa_mple-.test/": "invalid host name",
    "https://localhost/a.png": "points at this machine",
    "https://LOCALHOST./a.png": "points at this machine",
    "https://app.localhost/a.png": "points at this machine",
    "https://2130706433/": "unusual spelling of an IP address",
    "https://0x7f.1/": "unusual spelling",
    "https://0x7f000001/": "unusual spelling",
    "https://127.1/": "unusual spelling",
    "https://1.2.3.4.5/": "unusual spelling",
    "https://0177.0.0.1/": "Invalid IPv4 address",
    "https://127.000.000.001/": "Invalid IPv4 address",
    "https://127.0.0.1/": "loopback",
    "https://10.0.0.1/": "private",
    "https://169.254.169.254/latest/meta-data/": "link-local",
    "https://[::1]/": "loopback",
    "https://[::ffff:127.0.0.1]/": "IPv4-mapped form of 127.0.0.1",
    "https://[::ffff:7f00:1]/": "IPv4-mapped form of 127.0.0.1",
    "https://[fe80::1%25eth0]/": "link-local",
    "https://" + "a" * 9000 + ".test/": "longer than 8192",
}


@pytest.mark.parametrize(("url", "why"), BAD_URLS.items(), ids=lambda v: v[:40])
def test_bad_urls_are_refused_before_any_lookup(url: str, why: str) -> None:
    async def never(host: str, port: int) -> list[str]:
        raise AssertionError(f"resolved {host} for a URL that should be refused statically")

    with pytest.raises(UnsafeURLError) as caught:
        run(check_url(url, FetchPolicy(resolver=never)))
    assert why in caught.value.message
    assert len(caught.value.message) < 600


def test_plain_http_needs_permission() -> None:
    with pytest.raises(UnsafeURLError, match="NSFWD_FETCH_ALLOW_HTTP"):
        validate_url("http://images.test/a.png", FetchPolicy())
    assert validate_url("http://images.test/a.png", FetchPolicy(allow_http=True)).host == (
        "images.test"
    )


def test_good_urls_pass() -> None:
    for url in ["https://images.test/a.png", "https://IMAGES.test./a.png?x=1", "https://8.8.8.8/"]:
        validate_url(url, FetchPolicy())
    validate_url("https://bücher.test/b.png", FetchPolicy())  # IDNA: xn--bcher-kva.test
    run(check_url("https://public.test/a.png", policy()))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://canary.test/", "canary.test resolves to a loopback address"),
        ("https://metadata.test/", "metadata.test resolves to a link-local address"),
        ("https://mixed.test/", "mixed.test resolves to a loopback address"),
        ("https://mixed-first.test/", "mixed-first.test resolves to a loopback address"),
    ],
)
def test_check_url_refuses_names_that_lead_to_refused_addresses(url: str, why: str) -> None:
    with pytest.raises(UnsafeURLError) as caught:
        run(check_url(url, policy()))
    assert why in caught.value.message


def test_check_url_reports_names_that_do_not_resolve() -> None:
    with pytest.raises(FetchFailedError, match=re.escape("could not resolve nowhere.test")):
        run(check_url("https://nowhere.test/", policy()))
    with pytest.raises(FetchFailedError, match="resolves to no addresses"):
        run(check_url("https://empty.test/", policy()))


def test_check_url_gives_up_on_a_slow_resolver() -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return []

    quick = policy(resolver=slow, timeouts=FetchTimeouts(connect=0.2, read=1, total=2))
    started = time.monotonic()
    with pytest.raises(
        FetchFailedError, match=re.escape("resolving images.test took longer than 0.2 s")
    ):
        run(check_url("https://images.test/", quick))
    assert time.monotonic() - started < 1


def test_the_system_resolver_answers_ip_literals_without_dns() -> None:
    assert run(system_resolver("127.0.0.2", 80)) == ["127.0.0.2"]


# --- Fetching from the image host --------------------------------------------------------------


def test_fetch_returns_the_body_byte_for_byte(image_host: str, canary: Canary) -> None:
    assert run(fetch(f"{image_host}/image", policy())) == IMAGE


def test_fetch_by_name_connects_to_the_checked_address(image_host: str, canary: Canary) -> None:
    port = canary.port
    lookups: list[str] = []

    async def counting(host: str, port: int) -> list[str]:
        lookups.append(host)
        return await names(host, port)

    assert run(fetch(f"http://images.test:{port}/image", policy(resolver=counting))) == IMAGE
    assert lookups == ["images.test"]
    seen = run(fetch(f"http://images.test:{port}/headers", policy()))
    assert b'"host":"images.test:' in seen
    # a browser's User-Agent and Accept, so a host cannot serve nsfwd another image than
    # viewers get (cloaking; issue 21); webhooks still say nsfwd
    assert b'"user-agent":"Mozilla/5.0 ' in seen and b"nsfwd" not in seen.lower()
    assert b'"accept":"image/avif,image/webp' in seen


def test_the_image_host_itself_is_refused_without_allow_networks(
    image_host: str, canary: Canary
) -> None:
    with pytest.raises(UnsafeURLError, match=re.escape("127.0.0.2 is a loopback address")):
        run(fetch(f"{image_host}/image", policy(allow_networks=())))


def test_relative_redirects_on_the_image_host_are_followed(image_host: str, canary: Canary) -> None:
    for status_code in (301, 302, 303, 307, 308):
        url = f"{image_host}/redirect?status={status_code}&to=/image"
        assert run(fetch(url, policy())) == IMAGE
    assert run(fetch(f"{image_host}/chain/5", policy())) == IMAGE


def canary_urls(port: int) -> list[str]:
    """Every way the tests try to reach the canary on 127.0.0.1:PORT."""
    return [
        f"http://127.0.0.1:{port}/stolen",
        f"http://127.0.0.3:{port}/stolen",
        f"http://localhost:{port}/stolen",
        f"http://sub.localhost:{port}/stolen",
        f"http://2130706433:{port}/stolen",
        f"http://0177.0.0.1:{port}/stolen",
        f"http://0x7f.1:{port}/stolen",
        f"http://0x7f000001:{port}/stolen",
        f"http://127.1:{port}/stolen",
        f"http://[::ffff:127.0.0.1]:{port}/stolen",
        f"http://[::ffff:7f00:1]:{port}/stolen",
        f"http://canary.test:{port}/stolen",
        f"http://canary.test.:{port}/stolen",
        f"http://mixed.test:{port}/stolen",
        f"http://mixed-first.test:{port}/stolen",
    ]


def test_nothing_reaches_the_canary_directly(canary: Canary) -> None:
    for url in canary_urls(canary.port):
        with pytest.raises(UnsafeURLError):
            run(fetch(url, policy()))


@pytest.mark.parametrize("status_code", [301, 302, 303, 307, 308])
def test_redirects_to_the_canary_are_refused(
    image_host: str, canary: Canary, status_code: int
) -> None:
    port = canary.port
    targets = [*canary_urls(port), f"//127.0.0.1:{port}/stolen", f"//canary.test:{port}/"]
    for target in targets:
        url = f"{image_host}/redirect?status={status_code}&to={quote(target, safe='')}"
        with pytest.raises(UnsafeURLError) as caught:
            run(fetch(url, policy()))
        assert "redirected (hop 1) to" in caught.value.message, target


def test_a_redirect_chain_to_the_canary_is_refused_at_its_last_hop(
    image_host: str, canary: Canary
) -> None:
    to = quote(f"http://canary.test:{canary.port}/stolen", safe="")
    with pytest.raises(UnsafeURLError) as caught:
        run(fetch(f"{image_host}/chain/4?to={to}", policy()))
    message = caught.value.message
    assert f"redirected (hop 4) to http://canary.test:{canary.port}/stolen" in message
    assert "canary.test resolves to a loopback address" in message


def test_redirects_to_data_and_other_schemes_are_refused(image_host: str, canary: Canary) -> None:
    for target, why in [
        ("data:image/png;base64,AAAA", "data: URIs"),
        ("file:///etc/passwd", "file: scheme"),
        ("https://user@images.test/", "credentials"),
    ]:
        url = f"{image_host}/redirect?to={quote(target, safe='')}"
        with pytest.raises(UnsafeURLError, match="redirected \\(hop 1\\)") as caught:
            run(fetch(url, policy()))
        assert why in caught.value.message


def test_http_is_refused_when_only_https_is_allowed(image_host: str, canary: Canary) -> None:
    with pytest.raises(UnsafeURLError, match="uses plain http"):
        run(fetch(f"{image_host}/image", policy(allow_http=False)))


def test_too_many_redirects_fail(image_host: str, canary: Canary) -> None:
    with pytest.raises(FetchFailedError, match="redirected more than 5 times"):
        run(fetch(f"{image_host}/chain/6", policy()))
    with pytest.raises(FetchFailedError, match="redirected more than 1 times"):
        run(fetch(f"{image_host}/chain/2", policy(max_redirects=1)))


def test_dns_rebinding_cannot_reach_the_canary(image_host: str, canary: Canary) -> None:
    """A name that answers the image host once and the canary afterwards."""
    answers: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        answer = "127.0.0.2" if not answers else "127.0.0.1"
        answers.append(answer)
        return [answer]

    url = f"http://rebind.test:{canary.port}/image"
    assert run(fetch(url, policy(resolver=rebinding))) == IMAGE  # one lookup, pinned
    assert answers == ["127.0.0.2"]

    answers.clear()
    rebinding_policy = policy(resolver=rebinding)

    async def check_then_fetch() -> bytes:
        await check_url(url, rebinding_policy)  # sees 127.0.0.2
        return await fetch(url, rebinding_policy)  # sees 127.0.0.1: refused, not reached

    refusal = re.escape("rebind.test resolves to a loopback address")
    with pytest.raises(UnsafeURLError, match=refusal):
        run(check_then_fetch())


def test_failed_statuses_fail_with_the_status(image_host: str, canary: Canary) -> None:
    for code, words in [(404, "404 Not Found"), (500, "500 Internal Server Error"), (304, "304")]:
        with pytest.raises(FetchFailedError, match=words):
            run(fetch(f"{image_host}/status/{code}", policy()))
    with pytest.raises(FetchFailedError, match="302 without a Location header"):
        run(fetch(f"{image_host}/status/302", policy()))


def test_a_body_of_exactly_the_limit_passes(image_host: str, canary: Canary) -> None:
    assert run(fetch(f"{image_host}/image", policy(max_bytes=len(IMAGE)))) == IMAGE
    with pytest.raises(FetchFailedError, match=f"is {len(IMAGE)} bytes, over the"):
        run(fetch(f"{image_host}/image", policy(max_bytes=len(IMAGE) - 1)))


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    image_host: str, canary: Canary
) -> None:
    chunks = 200  # 12.5 MiB declared; sending it all would take over 0.4 s
    started = time.monotonic()
    with pytest.raises(FetchFailedError, match=f"is {chunks * CHUNK} bytes, over the 10485760"):
        run(fetch(f"{image_host}/declared?chunks={chunks}", policy(max_bytes=10 * 1024 * 1024)))
    assert time.monotonic() - started < 0.3
    time.sleep(0.1)  # the server notices the client has gone and stops
    assert produced["declared"] < chunks // 2


def test_a_chunked_body_over_the_limit_is_cut_off(image_host: str, canary: Canary) -> None:
    chunks = 1000  # 62.5 MiB; sending it all would take over 2 s
    started = time.monotonic()
    with pytest.raises(FetchFailedError, match="sent more than 262144 bytes, over the limit"):
        run(fetch(f"{image_host}/stream?chunks={chunks}", policy(max_bytes=256 * 1024)))
    assert time.monotonic() - started < 1
    time.sleep(0.1)
    assert produced["stream"] < chunks // 10


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "x-bomb"])
def test_encoded_bodies_are_refused_before_reading(
    image_host: str, canary: Canary, encoding: str
) -> None:
    """The fetch asks for identity; a body the server encoded anyway (a 20 KiB gzip that inflates
    to 20 MiB) is refused unread, rather than inflated past the size cap."""
    with pytest.raises(FetchFailedError) as caught:
        run(fetch(f"{image_host}/encoded?encoding={encoding}", policy()))
    message = caught.value.message
    assert f"Content-Encoding {encoding}" in message and "not accepted" in message, message


def test_identity_encoding_is_accepted(image_host: str, canary: Canary) -> None:
    assert run(fetch(f"{image_host}/encoded?encoding=identity", policy())) == IMAGE


def test_a_stalled_server_fails_quickly(image_host: str, canary: Canary) -> None:
    quick = policy(timeouts=FetchTimeouts(connect=1, read=0.3, total=5))
    started = time.monotonic()
    with pytest.raises(FetchFailedError, match=re.escape("sent nothing for 0.3 s")):
        run(fetch(f"{image_host}/stall", quick))
    assert time.monotonic() - started < 2


def test_a_trickling_server_hits_the_overall_deadline(image_host: str, canary: Canary) -> None:
    slow = policy(timeouts=FetchTimeouts(connect=1, read=2, total=0.5), max_bytes=10**9)
    started = time.monotonic()
    with pytest.raises(FetchFailedError, match=re.escape("took longer than 0.5 s in all")):
        run(fetch(f"{image_host}/stream?chunks=100&delay=0.05", slow))
    assert time.monotonic() - started < 2


def test_a_slow_resolver_is_a_connect_timeout(image_host: str, canary: Canary) -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return ["127.0.0.2"]

    quick = policy(resolver=slow, timeouts=FetchTimeouts(connect=0.2, read=1, total=5))
    with pytest.raises(FetchFailedError, match=r"connecting to \S+ took longer than 0\.2 s"):
        run(fetch(f"http://images.test:{canary.port}/image", quick))


def test_network_failures_fail(image_host: str, canary: Canary) -> None:
    with pytest.raises(FetchFailedError, match=re.escape("could not resolve nowhere.test")):
        run(fetch("http://nowhere.test/image", policy()))
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.2", 0))
    port = closed_port.getsockname()[1]
    closed_port.close()
    with pytest.raises(FetchFailedError, match="could not fetch"):
        run(fetch(f"http://127.0.0.2:{port}/image", policy()))


# --- The client for other callers (webhooks) ----------------------------------------------------


def test_safe_client_posts_to_allowed_hosts_and_refuses_the_rest(
    image_host: str, canary: Canary
) -> None:
    port = canary.port

    async def main() -> None:
        async with safe_async_client(policy()) as client:
            response = await client.post(f"http://images.test:{port}/echo", content=b"hello")
            assert response.content == b"hello"
            assert response.request.headers["user-agent"].startswith("nsfwd/")
            for url in canary_urls(port):
                # httpx itself refuses to parse a few spellings (0177.0.0.1): also fine.
                with pytest.raises((UnsafeURLError, httpx.InvalidURL)):
                    await client.post(url, content=b"secret")
            with pytest.raises(httpx.ConnectError, match=re.escape("resolve nowhere.test")):
                await client.post("http://nowhere.test/hook", content=b"x")

    run(main())


def test_safe_client_checks_every_redirect(image_host: str, canary: Canary) -> None:
    port = canary.port

    async def get(target: str, follow: bool) -> httpx.Response:
        async with safe_async_client(policy()) as client:
            url = f"{image_host}/redirect?to={quote(target, safe='')}"
            return await client.get(url, follow_redirects=follow)

    assert run(get("/image", follow=True)).content == IMAGE
    assert run(get("/image", follow=False)).status_code == 302
    for follow in (True, False):
        for target in [f"http://127.0.0.1:{port}/", "data:text/plain,hi", f"//localhost:{port}/"]:
            with pytest.raises(UnsafeURLError, match=r"redirects to .*, which is refused"):
                run(get(target, follow))
    refusal = re.escape("canary.test resolves to a loopback address")
    with pytest.raises(UnsafeURLError, match=refusal):
        run(get(f"http://canary.test:{port}/stolen", follow=True))


def test_safe_client_ignores_proxies_from_the_environment(
    image_host: str, canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{canary.port}")

    async def main() -> bytes:
        async with safe_async_client(policy()) as client:
            return (await client.get(f"{image_host}/image")).content

    assert run(main()) == IMAGE


# --- HTTPS: the connection goes to the checked IP, TLS still names the host --------------------


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    """An https image host on 127.0.0.2 whose certificate names only images.test."""
    import trustme  # a dev dependency: a missing one fails the test rather than skipping it

    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("tls") / "images.test.pem"
    authority.issue_cert("images.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = ssl.create_default_context()
    authority.configure_trust(context)
    with serve_app(APP, host="127.0.0.2", ssl_certfile=str(pem), ssl_keyfile=str(pem)) as url:
        yield url.replace("http://", "https://"), context


def test_https_verifies_the_url_host_while_connecting_to_the_checked_ip(
    tls_host: tuple[str, ssl.SSLContext], canary: Canary
) -> None:
    base, context = tls_host
    port = httpx.URL(base).port
    secure = policy(allow_http=False, ssl_context=context)
    assert run(fetch(f"https://images.test:{port}/image", secure)) == IMAGE
    for wrong_name in [f"https://127.0.0.2:{port}/image", f"https://other.test:{port}/image"]:
        with pytest.raises(FetchFailedError, match="CERTIFICATE_VERIFY_FAILED"):
            run(fetch(wrong_name, secure))
    with pytest.raises(FetchFailedError, match="CERTIFICATE_VERIFY_FAILED"):
        run(fetch(f"https://images.test:{port}/image", policy(allow_http=False)))  # certifi roots
    downgrade = quote(f"http://images.test:{port}/image", safe="")
    with pytest.raises(UnsafeURLError, match=r"redirected \(hop 1\) .* uses plain http"):
        run(fetch(f"https://images.test:{port}/redirect?to={downgrade}", secure))
