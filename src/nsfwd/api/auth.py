"""Who is calling: one rule for API keys, shared by every wire protocol.

A key is either static (``NSFWD_API_KEYS``, compared in constant time) or made with
``nsfwd keys create`` (kept in the job store, looked up by its hash, see
:mod:`nsfwd.jobs.keys`). :class:`KeyRing` takes the key a request presents and answers with the
:class:`Caller`, or raises :class:`AuthenticationError` saying whether the key was missing or
wrong; each protocol renders that refusal its own way (Prodia: plain text with
``WWW-Authenticate: Bearer``; Eachlabs: its JSON error body).

With no static key and no key ever created in the store, the API is open: no key is needed
(the server then refuses to bind beyond loopback, see :mod:`nsfwd.serve.server`). Once any key
exists, every request needs one; revoking the last key does not reopen the API.

Some keys may also administer the banks of known images (``Caller.admin``): the static ones in
``NSFWD_ADMIN_KEYS``, and those made with ``nsfwd keys create --admin``. An open API has no
administrator: bank administration always takes such a key.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nsfwd.api.fairness import KeySlots
from nsfwd.api.ratelimit import KeyLimits
from nsfwd.jobs import Store
from nsfwd.jobs.keys import static_key_ref
from nsfwd.settings import Settings
from nsfwd.verdict import PolicyName


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
        """Each key's Prodia requests in progress in this process (its fair share)."""
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

    async def identify(self, presented: str | None) -> Caller | None:
        """The caller whose key is ``presented`` (``None`` or blank: no key); ``None`` when the
        API is open. Raises :class:`AuthenticationError` when a key is needed and ``presented``
        is missing, unknown or revoked."""
        key = (presented or "").strip()
        if key:
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
            return None
        raise AuthenticationError(missing=not key, sources=self.sources)


__all__ = ["AuthenticationError", "Caller", "KeyLimits", "KeyRing", "bearer_token", "key_matches"]
