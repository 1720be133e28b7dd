"""Who is calling: one rule for API keys, shared by every wire protocol.

A key is either static (``NSFWD_API_KEYS``, compared in constant time) or made with
``nsfwd keys create`` (kept in the job store, looked up by its hash, see
:mod:`nsfwd.jobs.keys`). :class:`KeyRing` takes the key a request presents and answers with the
:class:`Caller`, or raises :class:`AuthenticationError` saying whether the key was missing or
wrong; each protocol renders that refusal its own way (Prodia: plain text with
``WWW-Authenticate: Bearer``; Eachlabs: its JSON error body).

With no static key and no key ever created in the store, the API is open: no key is needed
(the server then refuses to bind beyond loopback, see :mod:`nsfwd.serve.server`), and a request
must name a loopback host (``Host: localhost``, ``127.0.0.1``, ``[::1]``): a web page whose own
name an attacker points at 127.0.0.1 (DNS rebinding) sends its own name, and is refused. Once
any key exists, every request needs one; revoking the last key does not reopen the API.

Wrong keys are counted per client address (:class:`FailedAttempts`); an address past
``NSFWD_AUTH_FAILURES_PER_MINUTE`` gets 429 for every request until its minute has passed, so
keys cannot be guessed at speed.

Some keys may also administer the banks of known images (``Caller.admin``): the static ones in
``NSFWD_ADMIN_KEYS``, and those made with ``nsfwd keys create --admin``. An open API has no
administrator: bank administration always takes such a key.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.requests import HTTPConnection

from nsfwd.api.fairness import KeySlots
from nsfwd.api.http.errors import ApiError, TooBusyError
from nsfwd.api.ratelimit import KeyLimits
from nsfwd.jobs import Store
from nsfwd.jobs.keys import static_key_ref
from nsfwd.settings import Settings
from nsfwd.verdict import PolicyName

FAILURE_WINDOW_S: Final = 60.0
TRACKED_ADDRESSES: Final = 10_000
"""Client addresses whose failures are remembered at most (the least recent are forgotten)."""
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Caller:
    """The API key calling, as far as jobs, predictions and limits are concerned."""

    ref: str
    """What its jobs record as their owner (``predictions.api_key``): a store key's id, or a
    hash prefix of a static key."""
    limits: KeyLimits
    policy: PolicyName | None = None
    """The key's own verdict policy, which its predictions carry; ``None`` (static keys, and
    store keys without one): the server's."""
    threshold: float | None = None
    """The key's own threshold; ``None``: the server's."""
    region_thresholds: str | None = None
    """The key's own region thresholds (``LABEL=T,...``); ``None``: the server's."""
    admin: bool = False
    """Whether the key may administer the banks of known images."""
    video: Mapping[str, Any] = field(default_factory=dict)
    """The video options the key sets (``interval``, ``min_frames``), over the server's."""


class AuthenticationError(Exception):
    """A request without a key, or with one this server does not accept (or no longer)."""

    def __init__(self, *, missing: bool, sources: str) -> None:
        """``missing``: no key was presented (else a wrong or revoked one); ``sources``: where
        keys come from, for the message (see :attr:`KeyRing.sources`)."""
        super().__init__("missing API key" if missing else "invalid API key")
        self.missing = missing
        self.sources = sources


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for none, another scheme
    or an empty token."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """Whether ``presented`` is one of ``keys``, compared in constant time per key."""
    candidate = presented.encode()
    return any(hmac.compare_digest(candidate, key.encode()) for key in keys)


class ForbiddenHostError(ApiError):
    """A request to the keyless API that names a host other than loopback (403)."""

    status = 403


class FailedAttempts:
    """Wrong keys per client address in the last ``window_s`` (an IPv6 address counts by its
    /64, which one client usually holds whole); past ``allowed``, :meth:`check` refuses."""

    def __init__(
        self,
        allowed: int,
        window_s: float = FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Allow ``allowed`` failures per address in ``window_s`` seconds."""
        self.allowed = allowed
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, address: str | None) -> None:
        """Raise :class:`TooBusyError` (429) while ``address`` is past its failures."""
        failures = self._recent(address)
        if failures is not None and len(failures) >= self.allowed:
            retry_after = max(1, int(failures[0] + self.window_s - self.clock()) + 1)
            raise TooBusyError(
                f"{len(failures)} wrong API keys came from your address in the last "
                f"{self.window_s:g} s; retry in {retry_after} s with the right key",
                retry_after,
            )

    def record(self, address: str | None) -> None:
        """Count a wrong key from ``address``."""
        if address is None:
            return
        group = _address_group(address)
        failures = self._recent(address) or deque()
        failures.append(self.clock())
        self._failures[group] = failures
        self._failures.move_to_end(group)
        while len(self._failures) > TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, address: str | None) -> deque[float] | None:
        if address is None:
            return None
        failures = self._failures.get(_address_group(address))
        if failures is None:
            return None
        while failures and failures[0] <= self.clock() - self.window_s:
            failures.popleft()
        return failures


def _address_group(address: str) -> str:
    """An IPv4 address, or the /64 of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port or brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback_host(name: str) -> bool:
    """Whether a request's host names this machine's loopback (``localhost``,
    ``*.localhost``, a loopback address)."""
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class KeyRing:
    """The keys a server accepts: static ones from the settings, and the store's (if any)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        """Accept ``settings.api_keys``, and the unrevoked keys of ``store`` when there is one
        (it must be open by the time :meth:`identify` is called)."""
        self.static_keys = tuple(settings.api_keys) + tuple(settings.admin_keys)
        self.admin_keys = tuple(settings.admin_keys)
        self.store = store
        self.static_limits = KeyLimits(
            creates_per_minute=settings.key_creates_per_minute,
            max_in_flight=settings.key_max_in_flight,
        )
        self.requests = KeySlots(settings.key_requests_limit, busy_at=settings.key_requests_busy_at)
        """Each key's requests in progress in this process (its fair share; an OpenAI
        moderation request weighs its images)."""
        self.reads = KeySlots(settings.key_max_reads, what="GET requests")
        """Each key's GET requests in progress in this process."""
        self.failures = FailedAttempts(settings.auth_failures_per_minute)
        self.open_hosts_only = is_loopback_host(host_name(settings.host))
        """Whether the keyless API answers only requests naming a loopback host: unless the
        operator bound it elsewhere on purpose (``--insecure-no-auth``)."""
        self._required = bool(self.static_keys)
        """Cached once true: keys are never deleted, only revoked, so it stays true."""

    @property
    def sources(self) -> str:
        """Where this server's keys come from, worded for error messages."""
        if self.store is None:
            return "its operator sets them in NSFWD_API_KEYS"
        return "its operator sets them in NSFWD_API_KEYS or makes them with `nsfwd keys create`"

    async def required(self) -> bool:
        """Whether callers need a key: a static key is set, or a key was ever created in the
        store (revoked ones count). Asks the store until the answer is yes, so a key created by
        another process (``nsfwd keys create``) closes the API at once."""
        if not self._required and self.store is not None:
            self._required = await self.store.keys.any_created()
        return self._required

    async def identify(
        self, presented: str | None, request: HTTPConnection | None = None
    ) -> Caller | None:
        """The caller whose key is ``presented`` (``None`` or blank: no key); ``None`` when the
        API is open. Raises :class:`AuthenticationError` when a key is needed and ``presented``
        is missing, unknown or revoked; with the ``request`` it came in, a 429
        (:class:`TooBusyError`) for an address past its wrong keys, and a 403
        (:class:`ForbiddenHostError`) for a keyless request naming another host than loopback."""
        address = None if request is None or request.client is None else request.client.host
        key = (presented or "").strip()
        if key:
            self.failures.check(address)
            if key_matches(key, self.static_keys):
                admin = key_matches(key, self.admin_keys)
                return Caller(static_key_ref(key), self.static_limits, admin=admin)
            if self.store is not None:
                record = await self.store.keys.find(key)
                if record is not None:
                    self._required = True
                    return Caller(
                        record.id,
                        KeyLimits(record.creates_per_minute, record.max_in_flight),
                        policy=record.policy,
                        threshold=record.threshold,
                        region_thresholds=record.region_thresholds,
                        admin=record.admin,
                        video=record.video,
                    )
        if not await self.required():
            self._check_host(request)
            return None
        if key:
            self.failures.record(address)
        raise AuthenticationError(missing=not key, sources=self.sources)

    def _check_host(self, request: HTTPConnection | None) -> None:
        """Refuse a keyless request that names another host than loopback (DNS rebinding)."""
        if request is None or not self.open_hosts_only:
            return
        name = host_name(request.headers.get("host", ""))
        if not is_loopback_host(name):
            raise ForbiddenHostError(
                f"this server has no API keys, so it answers only requests to localhost, not "
                f"to {name[:100]!r} (a web page could otherwise reach it through its own name); "
                "create a key with `nsfwd keys create` to serve other names"
            )


__all__ = [
    "AuthenticationError",
    "Caller",
    "FailedAttempts",
    "ForbiddenHostError",
    "KeyLimits",
    "KeyRing",
    "bearer_token",
    "key_matches",
]
