"""Per-key limits on the Eachlabs API: a key's own numbers (:class:`KeyLimits`), and creates per
minute counted in memory (:class:`CreateRateLimiter`), so a client hammering past its limit costs
a dictionary lookup, not a write transaction. In-flight counts, and creates per minute across
replicas, are checked in the store's transaction (:class:`nsfwd.jobs.Limits`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from nsfwd.jobs import CapacityError

WINDOW_S: Final = 60.0
"""The length of the creates-per-minute window."""


@dataclass(frozen=True)
class KeyLimits:
    """What one API key may do."""

    creates_per_minute: int
    """Predictions it may create in any 60 seconds."""
    max_in_flight: int
    """Predictions it may have queued or processing at once."""


class RateLimitedError(Exception):
    """A key has created its limit of predictions in the last minute."""

    def __init__(self, limit: int, retry_after: int) -> None:
        """``limit``: the key's creates per minute; ``retry_after``: seconds until one frees."""
        super().__init__(
            f"this API key has created {limit} predictions in the last minute, its limit; "
            f"retry in {retry_after} s"
        )
        self.limit = limit
        self.retry_after = retry_after


class CreateRateLimiter:
    """Creates per minute per key, in a moving window (see the module docstring).

    Use one per process and event loop; its storage lives in memory and expires old entries.
    """

    def __init__(self) -> None:
        """A limiter with empty windows."""
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, key: str, limits: KeyLimits) -> None:
        """Raise :class:`RateLimitedError` when ``key`` already has ``limits.creates_per_minute``
        creates in the window; count nothing either way (see :meth:`count`)."""
        item = RateLimitItemPerMinute(limits.creates_per_minute)
        if await self._limiter.test(item, key):
            return
        stats = await self._limiter.get_window_stats(item, key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitedError(limits.creates_per_minute, retry_after)

    async def count(self, key: str, limits: KeyLimits) -> None:
        """Count one create by ``key``: call it once the prediction exists, so a request refused
        for any reason (a bad URL, a full queue) costs the key nothing."""
        await self._limiter.hit(RateLimitItemPerMinute(limits.creates_per_minute), key)


def store_rate_retry_after(error: CapacityError) -> int:
    """Seconds to wait after the store refused a create for the key's rate (other replicas'
    creates filled the window): the time for the excess to leave the window, were the creates
    spread evenly over it."""
    excess = error.count - error.limit + 1
    return max(1, min(math.ceil(WINDOW_S), math.ceil(WINDOW_S * excess / max(error.limit, 1))))
