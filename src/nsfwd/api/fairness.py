"""Each key's fair share of a server: how much one API key may have in progress.

The engine's queue and the upload slots are shared by every caller, so without a bound per key
one client sending many requests at once fills them and everyone else gets 429 or 503.
:class:`KeySlots` counts the slots each key holds in this process: a request holds one, a
request that carries several images (OpenAI's ``input`` array) one per image. A key within its
share (``limit``) always gets its slots. Past its share it may still borrow capacity nobody else
is using, while the process has fewer than ``busy_at`` slots held in all (so a lone client still
fills a GPU's batches); once that many are held, a key past its share is refused with 429 and
``Retry-After``, and what is left is kept for the keys within theirs. A key's first request is
never refused by it, whatever its weight. The count lives in memory: it bounds what one process
holds, not a quota (the store's :class:`~nsfwd.jobs.Limits` hold across replicas).

A route takes a slot with :meth:`KeySlots.hold` once it knows the caller, before it reads the
body, may weigh it once the body says how many images it carries (:func:`grow`), and
:func:`release` gives it back when the answer is ready, whatever happened. A route whose answer
streams after it returns takes a :class:`Slot` with :meth:`KeySlots.take` and releases it when
the stream ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request

from nsfwd.api.http.errors import TooBusyError

RETRY_AFTER_S: Final = 1
"""What a refused key is told to wait: a request in progress usually ends within a second."""
_STATE: Final = "nsfwd_key_slot"
"""Where the held slot is kept on ``request.state``."""


@dataclass
class Slot:
    """The slots one request holds of one key (``weight`` of them) until :meth:`release`."""

    slots: KeySlots
    key: str
    weight: int

    def grow(self, weight: int) -> None:
        """Hold ``weight`` slots in all (more than now), or raise
        :class:`~nsfwd.api.http.errors.TooBusyError` as :meth:`KeySlots.take` does."""
        self.slots._grow(self, weight)

    def release(self) -> None:
        """Give the slots back (safe to call more than once)."""
        if self.weight:
            self.slots._release(self.key, self.weight)
            self.weight = 0


class KeySlots:
    """Slots in progress per key, at most ``limit`` each (see the module docstring)."""

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

    def held(self, key: str) -> int:
        """Slots ``key`` holds now."""
        return self._held[key]

    def take(self, key: str, weight: int = 1) -> Slot:
        """``weight`` of ``key``'s slots, or :class:`~nsfwd.api.http.errors.TooBusyError`."""
        slot = Slot(self, key, 0)
        self._grow(slot, weight)
        return slot

    def hold(self, request: Request, key: str | None, weight: int = 1) -> None:
        """Take ``weight`` of ``key``'s slots for ``request`` (``None``, the open API: nothing
        to count); raise :class:`~nsfwd.api.http.errors.TooBusyError` when it has no share left.
        A request holds one :class:`Slot` (a second call keeps the first)."""
        if key is None or getattr(request.state, _STATE, None) is not None:
            return
        setattr(request.state, _STATE, self.take(key, weight))

    def _grow(self, slot: Slot, weight: int) -> None:
        more = weight - slot.weight
        if more <= 0:
            return
        held = self._held[slot.key]
        first = held == slot.weight  # the key has nothing else in progress
        if not first and held + more > self.limit and self._total + more > self.busy_at:
            raise TooBusyError(
                f"this API key has {held} {self.what} in progress, past its share of this busy "
                f"server ({self.limit}); this one needs {weight}. Wait for some to finish, then "
                f"retry in {RETRY_AFTER_S} s",
                RETRY_AFTER_S,
            )
        self._held[slot.key] += more
        self._total += more
        slot.weight = weight

    def _release(self, key: str, weight: int) -> None:
        self._total -= weight
        self._held[key] -= weight
        if self._held[key] <= 0:
            del self._held[key]


def grow(request: Request, weight: int) -> None:
    """Weigh the slot ``request`` holds at ``weight`` (e.g. the images it carries); nothing
    when it holds none (the open API)."""
    slot = getattr(request.state, _STATE, None)
    if isinstance(slot, Slot):
        slot.grow(weight)


def detach(request: Request) -> Slot | None:
    """Take the slot ``request`` holds off it, for an answer that streams on after the route
    returns (the stream releases it when it ends)."""
    slot = getattr(request.state, _STATE, None)
    setattr(request.state, _STATE, None)
    return slot if isinstance(slot, Slot) else None


def release(request: Request) -> None:
    """Give back the slot ``request`` holds, if any (safe to call more than once)."""
    slot = getattr(request.state, _STATE, None)
    if isinstance(slot, Slot):
        setattr(request.state, _STATE, None)
        slot.release()


__all__ = ["RETRY_AFTER_S", "KeySlots", "Slot", "detach", "grow", "release"]
