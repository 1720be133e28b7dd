"""Every bank's hashes in memory, kept current with the store, and the match for an image.

A :class:`BankMatcher` hands out :class:`BankSnapshot`\\ s: immutable views of every bank at
one revision of the store, each bank's hashes in a :class:`~nsfwd.banks.index.HammingIndex`
plus a small tail of the latest additions (indexed apart, and merged into the main index once
it grows past :data:`TAIL_ROWS`, so that adding a hash to a bank of a million does not rebuild
it). It reads the store's revision (:mod:`nsfwd.jobs.banks`) at most every ``refresh_s``
seconds, or at once after :meth:`BankMatcher.invalidate` (a change made in this process): new
hashes are loaded by id, and after a removal everything is loaded again. Building and matching
run on the ``banks`` thread pool, off the event loop. If the store cannot be read, the last
snapshot goes on serving (and the failure is logged), so banks never stop the judging.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from nsfwd.banks.index import HammingIndex
from nsfwd.banks.pdq import HASH_BYTES, PictureHash
from nsfwd.engine import pools
from nsfwd.verdict import Match

if TYPE_CHECKING:
    from nsfwd.jobs.banks import Banks
    from nsfwd.jobs.records import Bank

log = logging.getLogger(__name__)

TAIL_ROWS: Final = 4096
"""Hashes added since a bank's index was built that are kept in a small index of their own."""
REFRESH_S: Final = 1.0
"""How often, at most, a matcher asks the store whether the banks changed."""


def _rows(raw: bytes | bytearray) -> npt.NDArray[np.uint8]:
    return np.frombuffer(bytes(raw), dtype=np.uint8).reshape(-1, HASH_BYTES)


def _index(raw: bytes | bytearray = b"") -> HammingIndex:
    return HammingIndex(_rows(raw))


@dataclass(frozen=True)
class BankHashes:
    """One bank's settings and hashes: an index and a tail of recent additions."""

    bank: Bank
    index: HammingIndex = field(default_factory=_index)
    tail: HammingIndex = field(default_factory=_index)

    def __len__(self) -> int:
        return len(self.index) + len(self.tail)

    def added(self, raw: bytes | bytearray) -> BankHashes:
        """This bank with the hashes in ``raw`` (32 bytes each) added: a new object, this one
        is not changed."""
        tail = np.concatenate([self.tail.raw, _rows(raw)])
        if len(tail) <= TAIL_ROWS:
            return replace(self, tail=HammingIndex(tail))
        merged = np.concatenate([self.index.raw, tail])
        return replace(self, index=HammingIndex(merged), tail=_index())

    def search(self, queries: Sequence[bytes]) -> list[tuple[int, bytes, int]]:
        """``(query, banked hash, distance)`` for every banked hash within the bank's
        distance of a query."""
        found = []
        for index in (self.index, self.tail):
            for hit in index.search(queries, self.bank.distance):
                found.append((hit.query, index.hash_at(hit.row), hit.distance))
        return found


@dataclass(frozen=True)
class BankSnapshot:
    """Every bank at one revision of the store."""

    revision: int = -1
    """The store's revision it shows (-1: none loaded yet)."""
    removals: int = -1
    last_id: int = 0
    """The highest hash id loaded."""
    banks: Mapping[str, BankHashes] = field(default_factory=dict)

    @property
    def hashes(self) -> int:
        """How many hashes the banks hold in all."""
        return sum(len(bank) for bank in self.banks.values())

    def match(self, pictures: Sequence[PictureHash]) -> Match | None:
        """The closest banked hash within its bank's distance of one of ``pictures``, or
        None. Hashes too featureless to match on (:attr:`PictureHash.usable`) are not looked
        up. Ties go to the first picture, then the bank first by name."""
        usable = [i for i, picture in enumerate(pictures) if picture.usable]
        queries = [pictures[i].hash for i in usable]
        best: tuple[int, int, str] | None = None
        best_match: Match | None = None
        for name in sorted(self.banks):
            bank = self.banks[name]
            for query, banked, distance in bank.search(queries):
                key = (distance, usable[query], name)
                if best is None or key < best:
                    best = key
                    best_match = Match(
                        bank=name,
                        hash=banked.hex(),
                        distance=distance,
                        category=bank.bank.category,
                        frame=pictures[usable[query]].frame,
                    )
        return best_match


class BankMatcher:
    """The banks of a store, in memory, current to within ``refresh_s`` (see the module)."""

    def __init__(
        self,
        banks: Banks,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Match against ``banks`` (a store's ``store.banks``, opened by its owner)."""
        self.banks_store = banks
        self.refresh_s = refresh_s
        self.clock = clock
        self._snapshot = BankSnapshot()
        self._checked_at = -float("inf")
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Read the store's revision on the next :meth:`snapshot` (this process changed it)."""
        self._checked_at = -float("inf")

    async def snapshot(self) -> BankSnapshot:
        """The banks as of the store's revision at most ``refresh_s`` ago. While another task
        loads a new revision (seconds, for a bank of a million after a removal), callers get
        the one before, as other processes would for up to ``refresh_s``; only the first load
        is waited for."""
        if self.clock() - self._checked_at < self.refresh_s:
            return self._snapshot
        if self._lock.locked() and self._snapshot.revision >= 0:
            return self._snapshot
        async with self._lock:
            if self.clock() - self._checked_at >= self.refresh_s:
                try:
                    self._snapshot = await self._refreshed(self._snapshot)
                except Exception as exc:  # the store out of reach: keep matching what we have
                    log.warning("cannot read the banks (%s); matching the last ones read", exc)
                self._checked_at = self.clock()
            return self._snapshot

    async def _refreshed(self, current: BankSnapshot) -> BankSnapshot:
        revision, removals = await self.banks_store.revision()
        if revision == current.revision:
            return current
        if removals != current.removals:  # something went: load everything again
            current = BankSnapshot(
                revision, removals, 0,
                {bank.name: BankHashes(bank) for bank in await self.banks_store.settings()},
            )  # fmt: skip
        added: dict[str, bytearray] = {}
        last_id = current.last_id
        while rows := await self.banks_store.rows_since(last_id):
            for _, bank, value in rows:
                added.setdefault(bank, bytearray()).extend(value)
            last_id = rows[-1][0]
        banks = dict(current.banks)

        def build() -> None:
            for name, rows in added.items():
                if name in banks:  # else the bank went since: the next revision drops it
                    banks[name] = banks[name].added(rows)

        await pools.named(pools.BANKS).run(build)
        log.info("banks at revision %d: %d banks, %d hashes", revision, len(banks),
                 sum(len(bank) for bank in banks.values()))  # fmt: skip
        return BankSnapshot(revision, removals, last_id, banks)
