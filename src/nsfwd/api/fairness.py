"""Each key's fair share of a server: how many requests one API key may have in progress.

The engine's queue and the upload slots are shared by every caller, so without a bound per key
one client sending many requests at once fills them and everyone else gets 429 or 503.
:class:`KeySlots` counts the requests each key has in progress in this process. A key within
its share (``limit``) always gets a slot. Past its share it may still borrow capacity nobody
else is using, while the process has fewer than ``busy_at`` requests in progress in all (so a
lone client still fills a GPU's batches); once that many are in progress, a key past its share
is refused with 429 and ``Retry-After``, and what is left of the queue is kept for the keys
within theirs. The count lives in memory: it bounds what one process holds, not a quota (the
store's :class:`~nsfwd.jobs.Limits` hold across replicas).

A route takes a slot with :meth:`KeySlots.hold` once it knows the caller, before it reads the
body, and :func:`release` gives it back when the answer is ready, whatever happened.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from starlette.requests import Request

from nsfwd.api.http.errors import TooBusyError

RETRY_AFTER_S: Final = 1
"""What a refused key is told to wait: a request in progress usually ends within a second."""
_STATE: Final = "nsfwd_key_slot"
"""Where the held slot is kept on ``request.state``."""


class KeySlots:
    """Requests in progress per key, at most ``limit`` each (see the module docstring)."""

    def __init__(self, limit: int, *, busy_at: int | None = None, what: str = "requests") -> None:
        """Allow each key ``limit`` at once, more while fewer than ``busy_at`` are in progress
        in all (``None``: never more); ``what`` names them in the refusal."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.busy_at = limit if busy_at is None else busy_at
        self.what = what
        self._held: Counter[str] = Counter()
        self._total = 0

    def hold(self, request: Request, key: str | None) -> None:
        """Take one of ``key``'s slots for ``request`` (``None``, the open API: nothing to
        count); raise :class:`~nsfwd.api.http.errors.TooBusyError` when it holds all of them."""
        if key is None or getattr(request.state, _STATE, None) is not None:
            return
        if self._held[key] >= self.limit and self._total >= self.busy_at:
            raise TooBusyError(
                f"this API key has {self._held[key]} {self.what} in progress, past its share of "
                f"this busy server ({self.limit}); wait for one to finish, then retry in "
                f"{RETRY_AFTER_S} s",
                RETRY_AFTER_S,
            )
        self._held[key] += 1
        self._total += 1
        setattr(request.state, _STATE, (self, key))

    def _release(self, key: str) -> None:
        self._total -= 1
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]


def release(request: Request) -> None:
    """Give back the slot ``request`` holds, if any (safe to call more than once)."""
    held = getattr(request.state, _STATE, None)
    if held is not None:
        slots, key = held
        setattr(request.state, _STATE, None)
        slots._release(key)


__all__ = ["RETRY_AFTER_S", "KeySlots", "release"]
