"""Which URLs and addresses may be fetched: the server-side request forgery policy.

A URL passes static checks first (:func:`validate_url`: scheme, credentials, host spelling,
literal addresses); its host name is then resolved once (:func:`resolve`) and *every* address it
resolves to must be public, or inside a network of ``NSFWD_FETCH_ALLOW_NETWORKS``
(:func:`check_address`). A refusal is an :class:`UnsafeURLError` whose message says why.
:mod:`nsfwd.fetch.transport` connects only to the addresses these checks return.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

from nsfwd.engine import pools

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""An async callable (host, port) -> the IP addresses, as text, that the host name resolves to."""

MAX_URL_LENGTH = 8192
FETCH_ALLOW_SETTING = "NSFWD_FETCH_ALLOW_NETWORKS"
WEBHOOK_ALLOW_SETTING = "NSFWD_WEBHOOK_ALLOW_NETWORKS"


class FetchError(ValueError):
    """A URL could not be fetched; ``message`` says why, in words fit for an API client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsafeURLError(FetchError):
    """The URL, or where it leads, is refused by policy (scheme, credentials, private address)."""


class FetchFailedError(FetchError):
    """The URL was allowed but fetching failed: DNS, connection, status, size or time."""


@dataclass(frozen=True)
class FetchTimeouts:
    """Seconds allowed to connect (DNS included), between bytes read, and for the whole fetch."""

    connect: float = 5.0
    read: float = 10.0
    total: float = 30.0


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the operating system's resolver gives for ``host``, in its order, looked
    up on the ``dns`` pool (:mod:`nsfwd.engine.pools`), not asyncio's shared default one."""
    return await _lookup(pools.DNS, host, port)


async def webhook_resolver(host: str, port: int) -> list[str]:
    """:func:`system_resolver` for webhook receivers, on the ``webhooks`` pool, so that slow
    names given as webhooks cannot hold up image fetching, nor the reverse."""
    return await _lookup(pools.WEBHOOKS, host, port)


async def _in_turn(key: str, resolver: Resolver, host: str, port: int) -> list[str]:
    """``resolver``'s answer, in one of ``key``'s turns on the ``dns`` pool."""
    async with pools.key_shares(pools.DNS).turn(key):
        return await resolver(host, port)


async def _lookup(pool: str, host: str, port: int) -> list[str]:
    infos = await pools.named(pool).run(
        partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class FetchPolicy:
    """Where and how URLs may be fetched.

    ``allow_networks`` lists CIDRs exempt from the refusal of non-public addresses (intranets,
    tests); ``allow_setting`` names the setting that lists them, for refusal messages (image
    fetching and webhooks are allowed separately); ``resolver`` turns host names into addresses
    and is injectable for tests; ``ssl_context`` defaults to certifi's roots (or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
    """

    allow_networks: Sequence[str] = ()
    allow_setting: str = FETCH_ALLOW_SETTING
    allow_http: bool = False
    max_bytes: int = 10 * 1024 * 1024
    timeouts: FetchTimeouts = FetchTimeouts()
    max_redirects: int = 5
    resolver: Resolver = field(default=system_resolver, compare=False)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = parse_networks(self.allow_networks)
        object.__setattr__(self, "allow_networks", tuple(str(n) for n in networks))
        object.__setattr__(self, "networks", networks)

    def for_key(self, key: str | None) -> FetchPolicy:
        """This policy for fetches made for API key ``key``: its host-name lookups take turns
        within the key's share of the ``dns`` pool (:func:`nsfwd.engine.pools.key_shares`), so
        one key's slow names cannot stall everyone's fetching (``None``: unchanged)."""
        if key is None:
            return self
        return replace(self, resolver=partial(_in_turn, key, self.resolver))

    def allows(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in one of the allowed networks (its IPv4 form included)."""
        candidates = [address]
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(a in network for a in candidates for network in self.networks)


def parse_networks(values: str | Iterable[object]) -> tuple[IPNetwork, ...]:
    """CIDRs such as ``10.0.0.0/8`` or ``fd00::/8`` (a list, or text with commas) as networks.

    Host bits are dropped (``10.1.2.3/8`` is ``10.0.0.0/8``); a bare address is a /32 or /128.
    """
    if isinstance(values, str):
        values = [value for value in values.split(",") if value.strip()]
    networks = []
    for value in values:
        try:
            networks.append(ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a network; write CIDRs such as 10.0.0.0/8 or fd00::/8"
            ) from None
    return tuple(networks)


# --- Addresses ---------------------------------------------------------------------------------

_V4_REFUSED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), why)
    for cidr, why in [
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("10.0.0.0/8", "a private address (10.0.0.0/8)"),
        ("100.64.0.0/10", "a shared carrier-grade NAT address (100.64.0.0/10)"),
        ("127.0.0.0/8", "a loopback address (127.0.0.0/8)"),
        ("169.254.0.0/16", "a link-local address (169.254.0.0/16)"),
        ("172.16.0.0/12", "a private address (172.16.0.0/12)"),
        ("192.0.0.0/24", "an IETF protocol assignment (192.0.0.0/24)"),
        ("192.0.2.0/24", "a documentation address (192.0.2.0/24)"),
        ("192.88.99.0/24", "a 6to4 relay address (192.88.99.0/24)"),
        ("192.168.0.0/16", "a private address (192.168.0.0/16)"),
        ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
        ("198.51.100.0/24", "a documentation address (198.51.100.0/24)"),
        ("203.0.113.0/24", "a documentation address (203.0.113.0/24)"),
        ("224.0.0.0/4", "a multicast address (224.0.0.0/4)"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
    ]
)
_V6_REFUSED: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), why)
    for cidr, why in [
        ("::/128", "the unspecified address (::)"),
        ("::1/128", "the loopback address (::1)"),
        ("::/96", "an IPv4-compatible address (::/96, deprecated)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("2001::/32", "a Teredo tunnel address (2001::/32)"),
        ("2001::/23", "an IETF protocol assignment (2001::/23)"),
        ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
        ("3fff::/20", "a documentation address (3fff::/20)"),
        ("fc00::/7", "a unique-local (private) address (fc00::/7)"),
        ("fe80::/10", "a link-local address (fe80::/10)"),
        ("fec0::/10", "a site-local address (fec0::/10, deprecated)"),
        ("ff00::/8", "a multicast address (ff00::/8)"),
    ]
)
_V6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")


def address_refusal(address: str | IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (e.g. "a loopback address (...)").

    Returns None for a public address. Allowed networks are not consulted here; see
    :meth:`FetchPolicy.allows`. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64,
    6to4) are judged by the IPv4 address they lead to. The answer quotes addresses and networks;
    :func:`address_kind` is the version fit to tell about an address a name resolved to.
    """
    if isinstance(address, str):
        address = ip_address(address)
    if isinstance(address, IPv4Address):
        return _v4_refusal(address)
    return _v6_refusal(IPv6Address(address.packed))  # the packed form drops any %scope


def address_kind(address: IPAddress) -> str:
    """What kind of refused address ``address`` is ("a loopback address"), naming no address
    or network, so that a refusal does not tell where an internal name leads."""
    why = address_refusal(address) or "a public address"
    if why.startswith(("an IPv4-mapped form of", "a NAT64 form of", "a 6to4 form of")):
        why = why.split(", ", 1)[1]
    return _NUMBERS.sub("", why).strip()


_NUMBERS = re.compile(r"\s*\([^)]*[0-9:][^)]*\)|\s+the global unicast range.*")


def _v4_refusal(address: IPv4Address) -> str | None:
    for network, why in _V4_REFUSED:
        if address in network:
            return why
    return None if address.is_global else "not a globally routable address"


def _v6_refusal(address: IPv6Address) -> str | None:
    embedded, form = _embedded_ipv4(address)
    if embedded is not None:
        why = _v4_refusal(embedded)
        return None if why is None else f"{form} of {embedded}, {why}"
    for network, why in _V6_REFUSED:
        if address in network:
            return why
    if address not in _V6_GLOBAL_UNICAST:
        return "a reserved address (outside the global unicast range 2000::/3)"
    return None if address.is_global else "not a globally routable address"


def _embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address | None, str]:
    """The IPv4 address an IPv6 address stands for, and the name of that form."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "an IPv4-mapped form"
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF), "a NAT64 form"
    if address.sixtofour is not None:
        embedded = address.sixtofour
        # A 6to4 address with a public IPv4 inside is an ordinary global address.
        return (embedded, "a 6to4 form") if _v4_refusal(embedded) else (None, "")
    return None, ""


def check_address(address: str | IPAddress, policy: FetchPolicy, *, host: str = "") -> IPAddress:
    """``address`` parsed, or UnsafeURLError when the policy refuses it.

    ``host`` names the DNS name that led to the address, for the message.
    """
    try:
        parsed = ip_address(address) if isinstance(address, str) else address
    except ValueError:
        answer = f"{host or 'the resolver'} answered {address!r}"
        raise FetchFailedError(f"{answer}, not an IP address") from None
    if policy.allows(parsed):
        return parsed
    why = address_refusal(parsed)
    if why is None:
        return parsed
    hint = f"set {policy.allow_setting} to exempt trusted networks"
    if host:  # the caller named a host: do not tell what it resolves to
        raise UnsafeURLError(
            f"{host} resolves to {address_kind(parsed)}; only public addresses may be fetched "
            f"({hint})"
        )
    raise UnsafeURLError(f"{parsed} is {why}; only public addresses may be fetched ({hint})")


# --- URLs --------------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE)
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def validate_url(url: str | httpx.URL, policy: FetchPolicy) -> httpx.URL:
    """``url`` parsed, after the checks that need no network; UnsafeURLError says what is wrong.

    Refuses other schemes than https (and http when allowed), data: URIs, credentials in the
    URL, odd or unusually spelled hosts, ``localhost`` names, bad ports and literal addresses
    the policy refuses. Host names are resolved and checked later, at connection time.
    """
    parsed = _parse(url) if isinstance(url, str) else url
    shown = shorten(str(url))
    _check_scheme(parsed.scheme, shown, policy)
    if parsed.userinfo:
        raise UnsafeURLError(
            f"{shown} carries credentials (user@host); URLs with credentials are not accepted"
        )
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeURLError(f"{shown} has port {parsed.port}; ports run from 1 to 65535")
    host = _host(parsed)
    literal = _check_host(host, shown)
    if literal is not None:
        check_address(literal, policy)
    return parsed


def _parse(url: str) -> httpx.URL:
    shown = shorten(url)
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURLError(f"{shown} is longer than {MAX_URL_LENGTH} characters")
    if url[:5].lower() == "data:":
        raise UnsafeURLError("data: URIs are not accepted; pass an https URL")
    if any(char <= " " or char == "\x7f" for char in url):
        raise UnsafeURLError(f"{shown} contains spaces or control characters; encode them")
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURLError(f"{shown} is not a valid URL: {exc}") from None


def location_url(current: httpx.URL, location: str) -> httpx.URL:
    """Where a Location header leads from ``current``; absolute ones get the full checks."""
    if _SCHEME.match(location):
        return _parse(location)
    try:
        return current.join(location)
    except httpx.InvalidURL as exc:
        raise UnsafeURLError(f"{shorten(location)!r} is not a valid URL: {exc}") from None


def _check_scheme(scheme: str, shown: str, policy: FetchPolicy) -> None:
    if scheme == "https" or (scheme == "http" and policy.allow_http):
        return
    if scheme == "http":
        raise UnsafeURLError(
            f"{shown} uses plain http; use https (NSFWD_FETCH_ALLOW_HTTP=1 allows http)"
        )
    if not scheme:
        raise UnsafeURLError(f"{shown} is not an absolute URL; write https://host/path")
    raise UnsafeURLError(f"{shown} uses the {scheme}: scheme; only https URLs are fetched")


def _host(url: httpx.URL) -> str:
    """The URL's host as it goes on the wire: IDNA-encoded, IPv6 without brackets."""
    return url.raw_host.decode("ascii")


def _check_host(host: str, shown: str) -> IPAddress | None:
    """The host's address when it is a literal IP; refuses names that are not plain DNS names."""
    if not host:
        raise UnsafeURLError(f"{shown} has no host")
    try:
        return ip_address(host)
    except ValueError:
        pass
    if ":" in host or "%" in host:
        raise UnsafeURLError(f"{shown} has a malformed host {host!r}")
    name = host.removesuffix(".")
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise UnsafeURLError(
            f"{shown}: {host!r} is an unusual spelling of an IP address (decimal, octal or "
            "hexadecimal); write IPv4 addresses as four decimal numbers, like 93.184.216.34"
        )
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UnsafeURLError(f"{shown} has an invalid host name {host!r}")
    if labels[-1].lower() == "localhost":
        raise UnsafeURLError(f"{shown} points at this machine ({host}); use a public host")
    return None


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis), for URLs quoted in messages."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


# --- Resolution --------------------------------------------------------------------------------


async def resolve(host: str, port: int, policy: FetchPolicy) -> list[IPAddress]:
    """Every address ``host`` resolves to, each checked against the policy.

    A literal IP is checked without DNS. One refused address refuses the host, so that a
    name cannot mix a public address with a private one. Raises UnsafeURLError on refusal and
    FetchFailedError when the name does not resolve.
    """
    literal = _check_host(host, host)
    if literal is not None:
        return [check_address(literal, policy)]
    try:
        answers = await policy.resolver(host, port)
    except OSError as exc:
        raise FetchFailedError(f"could not resolve {host}: {exc}") from None
    if not answers:
        raise FetchFailedError(f"{host} resolves to no addresses")
    return [check_address(answer, policy, host=host) for answer in answers]


async def check_url(url: str, policy: FetchPolicy) -> None:
    """Everything :func:`fetch` checks before connecting: the URL itself, then its addresses.

    Usable when a prediction is created, to refuse bad URLs early (UnsafeURLError); the fetch
    checks again at connection time, so a name that changes its answers in between gains
    nothing.
    """
    parsed = validate_url(url, policy)
    host = _host(parsed)
    try:
        async with asyncio.timeout(policy.timeouts.connect):
            await resolve(host, _default_port(parsed), policy)
    except TimeoutError:
        raise FetchFailedError(
            f"resolving {host} took longer than {policy.timeouts.connect:g} s"
        ) from None
