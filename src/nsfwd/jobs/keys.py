"""API key secrets: making them, and the hashes that stand for them in the database.

A key is ``nsfwd_`` plus 43 URL-safe characters (256 random bits). Only its SHA-256 is stored:
a key with that much entropy needs no slow password hash, and looking a presented key up by its
hash needs no constant-time comparison (the lookup reveals nothing about the secret).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

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
