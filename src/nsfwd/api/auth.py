"""Static API keys: checking a presented key, and Prodia's ``Authorization: Bearer`` scheme.

With no keys configured, auth is off (the server refuses to bind beyond loopback then, see
:mod:`nsfwd.server`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.requests import Request

from nsfwd.api.errors import UnauthorizedError


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """Whether ``presented`` is one of ``keys``, compared in constant time per key."""
    candidate = presented.encode()
    return any(hmac.compare_digest(candidate, key.encode()) for key in keys)


def require_bearer(request: Request, keys: Sequence[str]) -> None:
    """Raise :class:`UnauthorizedError` unless the request bears one of ``keys`` as its token.

    Does nothing when ``keys`` is empty.
    """
    if not keys:
        return
    header = request.headers.get("authorization")
    if header is None:
        raise UnauthorizedError(
            "missing API token: send the header 'Authorization: Bearer <token>' with a token "
            "this server accepts (its operator sets them in NSFWD_API_KEYS)"
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError(
            "the Authorization header must be 'Bearer <token>'; no other scheme is accepted"
        )
    if not key_matches(token.strip(), keys):
        raise UnauthorizedError(
            "invalid API token: the Bearer token is not one this server accepts; check the "
            "token you were given"
        )
