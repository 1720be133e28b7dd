"""API keys: making their secrets, the hashes that stand for them, and the keys in the store.

A key is ``nsfwd_`` plus 43 URL-safe characters (256 random bits). Only its SHA-256 is stored:
a key with that much entropy needs no slow password hash, and looking a presented key up by its
hash needs no constant-time comparison (the lookup reveals nothing about the secret).
:class:`ApiKeys` keeps the keys ``nsfwd keys`` creates, lists and revokes, and finds the one a
request presents.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Row, or_, select, update

from nsfwd.jobs.database import Database
from nsfwd.jobs.records import ApiKey
from nsfwd.jobs.schema import api_keys
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Policy, PolicyName

KEY_PREFIX: Final = "nsfwd_"
DISPLAY_CHARS: Final = 12
"""Characters of a key shown in listings (``nsfwd_AbC123``): enough to tell keys apart."""
STATIC_REF_CHARS: Final = 16


def generate_key() -> str:
    """A new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """The SHA-256 of a key, as lowercase hex: what ``api_keys.key_hash`` holds."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def display_prefix(plaintext: str) -> str:
    """The start of a key, safe to show and to name it by (``nsfwd keys revoke``)."""
    return plaintext[:DISPLAY_CHARS]


def static_key_ref(plaintext: str) -> str:
    """What ``predictions.api_key`` records for a static key from ``NSFWD_API_KEYS``.

    A prefix of its hash: it tells keys apart (so one client cannot read another's jobs) without
    putting a usable secret in the database.
    """
    return hash_key(plaintext)[:STATIC_REF_CHARS]


class AmbiguousKeyError(LookupError):
    """A key prefix matches more than one key."""


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(**row._asdict())


class ApiKeys:
    """The API keys in a :class:`~nsfwd.jobs.database.Database` (hashes, never secrets)."""

    def __init__(self, database: Database, *, clock: Callable[[], datetime]) -> None:
        """Keys in ``database``; ``clock`` tells the current UTC time."""
        self.database = database
        self.clock = clock

    async def create(
        self,
        name: str,
        *,
        creates_per_minute: int = 100,
        max_in_flight: int = 10,
        policy: PolicyName | None = None,
        threshold: float | None = None,
        region_thresholds: str | None = None,
        admin: bool = False,
        video_interval: float | None = None,
        video_min_frames: int | None = None,
    ) -> tuple[str, ApiKey]:
        """Create an API key; returns its secret (shown once, never stored) and its record.

        ``policy``, ``threshold`` and ``region_thresholds`` (``LABEL=T,...``) decide its
        predictions' verdicts (``flagged``); ``video_interval`` and ``video_min_frames`` how
        its videos are sampled and judged; what is left ``None`` follows the server's.
        Raises ValueError when one is invalid. ``admin``: the key may also administer the
        banks of known images.
        """
        Policy().overridden(policy, threshold, region_thresholds)  # validates them
        VideoOptions(max_frames=10**9).overridden(  # validates both
            {"interval": video_interval, "min_frames": video_min_frames}
        )
        plaintext = generate_key()
        record = ApiKey(
            id=str(uuid.uuid4()),
            name=name,
            prefix=display_prefix(plaintext),
            key_hash=hash_key(plaintext),
            creates_per_minute=creates_per_minute,
            max_in_flight=max_in_flight,
            created_at=self.clock(),
            policy=policy,
            threshold=threshold,
            region_thresholds=region_thresholds,
            admin=admin,
            video_interval=video_interval,
            video_min_frames=video_min_frames,
        )
        values = {column.name: getattr(record, column.name) for column in api_keys.columns}
        async with self.database.write() as connection:
            await connection.execute(api_keys.insert().values(values))
        return plaintext, record

    async def all(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        async with self.database.read() as connection:
            return [_api_key(row) for row in (await connection.execute(query)).all()]

    async def any_created(self) -> bool:
        """Whether any key was ever created, revoked ones included (one row read at most)."""
        query = select(api_keys.c.id).limit(1)
        async with self.database.read() as connection:
            return (await connection.execute(query)).first() is not None

    async def revoke(self, id_or_prefix: str) -> ApiKey | None:
        """Revoke the key with this id, display prefix or secret; returns it (revoked), or
        ``None`` when none matches. Raises :class:`AmbiguousKeyError` if several match."""
        match = or_(
            api_keys.c.id == id_or_prefix,
            api_keys.c.prefix == id_or_prefix,
            api_keys.c.key_hash == hash_key(id_or_prefix),
        )
        async with self.database.write() as connection:
            rows = (await connection.execute(select(api_keys).where(match))).all()
            if not rows:
                return None
            if len(rows) > 1:
                raise AmbiguousKeyError(
                    f"{id_or_prefix!r} matches {len(rows)} keys; name the key by its id"
                )
            key = _api_key(rows[0])
            if key.revoked_at is None:
                revoke = (
                    update(api_keys)
                    .where(api_keys.c.id == key.id)
                    .values(revoked_at=self.clock())
                    .returning(*api_keys.c)
                )
                key = _api_key((await connection.execute(revoke)).one())
        return key

    async def find(self, plaintext: str) -> ApiKey | None:
        """The unrevoked key whose secret is ``plaintext``, or ``None``."""
        query = select(api_keys).where(
            api_keys.c.key_hash == hash_key(plaintext), api_keys.c.revoked_at.is_(None)
        )
        async with self.database.read() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _api_key(row)
